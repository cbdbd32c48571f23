#!/usr/bin/env python3
"""Runs the project's KVM tests inside the rig, for machines without /dev/kvm.

    run-kvm-tests.py BUILD_DIR OUT.json

The tests are those of `meson introspect BUILD_DIR --tests` whose name or suite says kvm, and
the demo; the build is not touched (build it first). One VM runs them all, one after the
other, from BUILD_DIR unchanged. OUT.json gets a line per test in the format of meson's
testlog.json ("result": OK, FAIL, SKIP, TIMEOUT, ERROR). A test that fails in the guest is a
FAIL. When the rig itself cannot run (no kernel, QEMU or KVM does not come up, time runs out)
it says "kvm tests: nested rig unavailable: REASON" and adds one SKIP: QEMU must not make the
suite flaky. Exits 1 when a test failed, else 0.

Environment: RIG_TIMEOUT (seconds for all of it: packages, kernel, VM; default 1500),
RIG_TIMEOUT_MULTIPLIER (each test's meson timeout is multiplied by it: everything is emulated;
default 10), and the knobs of run-in-kvm.sh and prepare.sh (RIG_KERNEL, RIG_CACHE ...).
"""
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(os.path.dirname(HERE))
BOOT_MARGIN = 90  # seconds of RIG_TIMEOUT kept for booting and stopping the VM
OUT_OF_TIME = 3  # the guest's exit status when the tests did not fit in RIG_TIMEOUT
KVM_GET_API_VERSION = 0xAE00


def selected(test):
    suites = [s.split(':')[-1] for s in test['suite']]
    return 'kvm' in test['name'] or 'kvm' in suites or test['name'] == 'demo'


def skip_line(reason):
    return {'name': 'membacking:kvmrig / nested-rig', 'result': 'SKIP', 'returncode': 77,
            'duration': 0, 'stdout': 'nested rig unavailable: %s\n' % reason}


def shared_dirs(dirs):
    """The directories to share writable: each once, none inside another (init mounts them
    in order, so a share inside another one would be hidden)."""
    out = []
    for d in sorted(set(os.path.realpath(d) for d in dirs)):
        if not any(d == o or d.startswith(o + '/') for o in out):
            out.append(d)
    return out


def stop(p):
    """SIGTERM first: run-in-kvm.sh then stops QEMU, which `timeout` put in a group of its own."""
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)


def run_bounded(cmd, seconds, **kw):
    """subprocess.run that stops the whole process group (apt, QEMU) when time runs out."""
    p = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
    try:
        return p.communicate(timeout=max(seconds, 1))[0], p.returncode
    except subprocess.TimeoutExpired:
        stop(p)
        return p.communicate()[0], None
    except BaseException:  # interrupted: leave no QEMU behind
        stop(p)
        raise


def host(build, out_path):
    build = os.path.realpath(build)
    timeout = int(os.environ.get('RIG_TIMEOUT', '1500'))
    deadline = time.monotonic() + timeout
    cache = os.path.realpath(os.environ.get('RIG_CACHE', os.path.join(CHECKOUT, 'build-kvmrig')))
    results = []

    def finish(reason=None):
        if reason:
            print('kvm tests: nested rig unavailable: %s' % reason, flush=True)
            results.append(skip_line(reason))
        with open(out_path, 'w') as f:
            for r in results:
                f.write(json.dumps(r) + '\n')
        return 1 if any(r['result'] not in ('OK', 'SKIP', 'EXPECTEDFAIL') for r in results) else 0

    listing = subprocess.run(['meson', 'introspect', build, '--tests'],
                             capture_output=True, text=True)
    if listing.returncode:
        return finish('meson introspect failed: ' + listing.stderr.strip())
    tests = [t for t in json.loads(listing.stdout) if selected(t)]
    if not tests:
        print('kvm tests: none in %s' % build)
        return finish()
    # Packages and kernel: at most half the time, the VM gets the rest.
    output, rc = run_bounded([os.path.join(HERE, 'prepare.sh')], timeout / 2,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(output, end='', flush=True)
    if rc != 0:
        return finish('prepare.sh (packages, kernel) %s'
                      % ('timed out' if rc is None else 'exited %d' % rc))
    vm_seconds = int(deadline - time.monotonic())
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='run.', dir=cache) as run:
        with open(os.path.join(run, 'tests.json'), 'w') as f:
            json.dump({'tests': tests, 'budget': vm_seconds - BOOT_MARGIN, 'workdir': build}, f)
        env = dict(os.environ, RIG_TIMEOUT=str(vm_seconds),
                   RIG_RW=' '.join(shared_dirs([CHECKOUT, build, cache])))
        print('kvm tests: %d tests in the rig (kernel %s, at most %d s)'
              % (len(tests), env.get('RIG_KERNEL', '6.12'), vm_seconds), flush=True)
        start = time.monotonic()
        # The tests' progress comes on stdout as it goes; the rig's stderr only tells of its own
        # failures (QEMU's log, the guest's console), kept to say why.
        with tempfile.TemporaryFile('w+') as err:
            _, rc = run_bounded([os.path.join(HERE, 'run-in-kvm.sh'), sys.executable,
                                 os.path.abspath(__file__), '--guest', run],
                                vm_seconds + 30, cwd=build, env=env, stderr=err)
            err.seek(0)
            errors = err.read()
        if os.path.exists(os.path.join(run, 'results.json')):
            with open(os.path.join(run, 'results.json')) as f:
                results += [json.loads(line) for line in f if line.strip()]
        done = os.path.exists(os.path.join(run, 'done'))
    print('kvm tests: the rig ran %d of %d tests in %.0f s'
          % (len(results), len(tests), time.monotonic() - start), flush=True)
    if done:
        return finish()
    # The rig's own failure, not a test's: say why.
    sys.stdout.write(errors)
    why = [l[5:] for l in errors.splitlines() if l.startswith('rig: ') and not l.startswith('rig: ----')]
    if rc in (124, None):
        reason = 'timed out after %d s (RIG_TIMEOUT)' % vm_seconds
    elif rc == OUT_OF_TIME:
        reason = 'out of time after %d of %d tests (RIG_TIMEOUT)' % (len(results), len(tests))
    else:
        reason = '%s, after %d of %d tests' % (why[0] if why else 'the runner in the guest exited %d'
                                               % rc, len(results), len(tests))
    return finish(reason)


def run_test(t, cwd, limit, own):
    """(returncode, result, output) of one test; None when the rig's time ran out first."""
    try:
        p = subprocess.Popen(t['cmd'], cwd=t['workdir'] or cwd, env=dict(os.environ, **t['env']),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:  # as in meson: a test that cannot start is an error
        return None, 'ERROR', str(e)
    try:
        output = p.communicate(timeout=limit)[0]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        output = p.communicate()[0]
        if limit < own:
            return None
        return p.returncode, 'TIMEOUT', output.decode(errors='replace')
    result = {0: 'OK', 77: 'SKIP', 99: 'ERROR'}.get(p.returncode, 'FAIL')  # meson's exitcode protocol
    return p.returncode, result, output.decode(errors='replace')


def guest(run):
    """In the VM: check /dev/kvm, run each test, append its result to results.json."""
    start = time.monotonic()
    try:
        with open('/dev/kvm', 'r+b', buffering=0) as kvm:
            version = fcntl.ioctl(kvm, KVM_GET_API_VERSION)
    except OSError as e:
        print('rig: /dev/kvm is not usable in the guest: %s' % e, file=sys.stderr)
        return 125
    if version != 12:
        print('rig: /dev/kvm has API version %d, not 12' % version, file=sys.stderr)
        return 125
    with open(os.path.join(run, 'tests.json')) as f:
        job = json.load(f)
    tests, budget = job['tests'], job['budget']
    multiplier = float(os.environ.get('RIG_TIMEOUT_MULTIPLIER', '10'))
    width = max([len(t['name']) for t in tests] + [0])
    failed = 0
    with open(os.path.join(run, 'results.json'), 'a') as out:
        for i, t in enumerate(tests, 1):
            left = budget - (time.monotonic() - start)
            own = t['timeout'] * multiplier if t['timeout'] > 0 else float('inf')
            began, wall = time.monotonic(), time.time()
            ran = run_test(t, job['workdir'], min(own, left), own) if left > 0 else None
            if ran is None:
                return OUT_OF_TIME
            rc, result, text = ran
            duration = time.monotonic() - began
            out.write(json.dumps({'name': 'membacking:kvmrig / ' + t['name'], 'stdout': text,
                                  'result': result, 'starttime': wall, 'duration': duration,
                                  'returncode': rc, 'env': t['env'], 'command': t['cmd']}) + '\n')
            out.flush()
            os.fsync(out.fileno())  # the host keeps what finished, even if the VM dies later
            print('%3d/%d %-*s %-7s %7.2f s' % (i, len(tests), width, t['name'], result, duration),
                  flush=True)
            if result == 'SKIP':  # in the rig a test has KVM: a skip is worth a look
                print('        ' + (text.strip().splitlines() or [''])[-1][:200], flush=True)
            elif result != 'OK':
                failed += 1
                lines = text.splitlines()
                print('-------- output of %s (last 100 of %d lines) --------' % (t['name'], len(lines)))
                print('\n'.join(lines[-100:]))
                print('-------- end of %s --------' % t['name'], flush=True)
    open(os.path.join(run, 'done'), 'w').close()
    return 1 if failed else 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == '--guest':
        return guest(sys.argv[2])
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that run_bounded cleans up
    return host(sys.argv[1], sys.argv[2])


if __name__ == '__main__':
    sys.exit(main())
