#!/usr/bin/env python3
"""Script tests of membacking-trace (suite 'trace'; see README.md here).

    trace_test.py output TOOL MODE TRACE EXPECTED    TOOL MODE TRACE prints EXPECTED exactly
    trace_test.py chrome TOOL TRACE                  --chrome output: valid JSON (json.tool),
                                                     one track per actor, nested slices, a
                                                     flow per delivered request, bound
    trace_test.py exit STATUS REGEX TOOL ARGS...     exits STATUS, some output line matches
    trace_test.py replay-golden TOOL REPLAY SCENARIO GOLDEN
                                                     records the single-layout replay of
                                                     SCENARIO, compares with GOLDEN (--check)
    trace_test.py replay-stages TOOL REPLAY SCENARIO records it, checks --stages and --chrome
    trace_test.py stages-warning TOOL SAMPLED EXACT  --stages warns on stderr about SAMPLED's
                                                     interpolated times, not about EXACT

Exit status 0 when the check passes, 1 when not (with what went wrong on stdout).
"""
import json
import os
import re
import subprocess
import sys
import tempfile


class Failed(Exception):
    pass


def run(cmd, env=None):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env)


def tool_output(tool, *args):
    r = run([tool] + list(args))
    if r.returncode != 0:
        raise Failed('%s exited %d:\n%s' % (' '.join([tool] + list(args)), r.returncode,
                                            r.stdout + r.stderr))
    return r.stdout


def check_output(tool, mode, trace, expected):
    got = tool_output(tool, mode, trace)
    with open(expected, encoding='utf-8') as f:
        want = f.read()
    if got != want:
        import difflib
        diff = difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                    expected, 'membacking-trace %s' % mode)
        raise Failed(''.join(diff))


# ---- chrome ----------------------------------------------------------------------------------

def read_records(trace):
    with open(trace, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def delivered_requests(recs):
    """Deliveries of requests (not of replies): those matching a call or forward on its way."""
    pending, n = {}, 0
    for r in recs:
        corr = int(r['corr'])  # a decimal string (an integer in older traces)
        key = (r['from'], corr)
        if corr == 0:
            continue
        if r['ev'] in ('call', 'forward'):
            pending[key] = (r['to'], r['kind'])
        elif r['ev'] == 'deliver' and pending.get(key) == (r['to'], r['kind']):
            del pending[key]
            n += 1
    return n


def check_nesting(track, slices):
    stack = []
    for ts, dur, name in sorted(slices, key=lambda s: (s[0], -s[1])):
        while stack and stack[-1] <= ts:
            stack.pop()
        if stack and ts + dur > stack[-1] + 1e-9:
            raise Failed('track %s: slice %s at %.3f overlaps an enclosing one without nesting'
                         % (track, name, ts))
        stack.append(ts + dur)


def check_chrome(tool, trace):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'chrome.json')
        with open(out, 'w', encoding='utf-8') as f:
            f.write(tool_output(tool, '--chrome', trace))
        r = run([sys.executable, '-m', 'json.tool', out])
        if r.returncode != 0:
            raise Failed('python3 -m json.tool rejects the output:\n' + r.stderr)
        with open(out, encoding='utf-8') as f:
            doc = json.load(f)
    events = doc['traceEvents']
    processes = {e['pid']: e['args']['name'] for e in events
                 if e['ph'] == 'M' and e['name'] == 'process_name'}
    threads = {(e['pid'], e['tid']): e['args']['name'] for e in events
               if e['ph'] == 'M' and e['name'] == 'thread_name'}
    for e in events:
        if e['ph'] != 'M' and (e['pid'], e['tid']) not in threads:
            raise Failed('event on a track without a thread_name: %r' % e)
    for pid, _ in threads:
        if pid not in processes:
            raise Failed('pid %d has no process_name' % pid)

    # One track per actor: pid = its loop, tid = its slot (+ 1000000 k when the slot was
    # reused), named after it.
    recs = read_records(trace)
    actors = {}
    for r in recs:
        for addr, name in ((r['from'], r.get('from_name', '')), (r['to'], r.get('to_name', ''))):
            if addr != '-':
                actors[addr] = actors.get(addr) or name
    for addr, name in actors.items():
        loop, slot = addr.rsplit('/', 1)[0], int(addr.rsplit('/', 1)[1].split('.')[0])
        want = (name + ' ' + addr) if name else addr
        tracks = [k for k, v in threads.items() if v == want]
        if not tracks:
            raise Failed('no track named %r' % want)
        pid, tid = tracks[0]
        if tid % 1000000 != slot or processes[pid] != 'loop ' + loop:
            raise Failed('track %r is pid %d (%s) tid %d' % (want, pid, processes[pid], tid))

    slices = {}
    for e in events:
        if e['ph'] == 'X':
            slices.setdefault((e['pid'], e['tid']), []).append((e['ts'], e['dur'], e['name']))
    for track, s in slices.items():
        check_nesting(threads[track], s)

    def enclosed(e):
        return any(ts - 1e-9 <= e['ts'] <= ts + dur + 1e-9
                   for ts, dur, _ in slices.get((e['pid'], e['tid']), []))

    flows = {}
    for e in events:
        if e['ph'] in ('s', 'f'):
            flows.setdefault(e['id'], {})[e['ph']] = e
            if not enclosed(e):
                raise Failed('flow event without an enclosing slice: %r' % e)
    for e in events:
        if e['ph'] == 'X' and not isinstance(e['args']['corr'], str):
            raise Failed('corr is not a string (JavaScript rounds above 2^53): %r' % e)
    handled = delivered_requests(recs)
    nhandle = sum(1 for e in events if e['ph'] == 'X' and e['cat'] == 'handle')
    if nhandle != handled or len(flows) != handled:
        raise Failed('%d requests delivered, but %d handle slices and %d flows'
                     % (handled, nhandle, len(flows)))
    for i, f in flows.items():
        if set(f) != {'s', 'f'} or f['f'].get('bp') != 'e' or f['s']['ts'] > f['f']['ts']:
            raise Failed('flow %s is not one s then one f (bp e): %r' % (i, f))


# ---- replays -----------------------------------------------------------------------------------

def record(replay, scenario, path):
    env = dict(os.environ, MEMBACKING_TRACE=path)
    r = run([replay, '--layout=single', scenario], env=env)
    if r.returncode != 0:
        raise Failed('the replay failed (%d):\n%s' % (r.returncode, r.stdout + r.stderr))


def replay_golden(tool, replay, scenario, golden):
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, 'replay.trace')
        record(replay, scenario, trace)
        r = run([tool, '--check', golden, trace])
        if r.returncode != 0:
            raise Failed('%s\nthe per-actor message sequence differs from %s; if the change is '
                         'meant, regenerate it (tests/trace/README.md, "Golden traces")'
                         % ((r.stdout + r.stderr).strip(), golden))


ROW = re.compile(r'^(\S+)\s+(.+?)\s+(\d+)\s+(\d+\.\d{3})\s+(\d+\.\d{3})$')


def replay_stages(tool, replay, scenario):
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, 'replay.trace')
        record(replay, scenario, trace)
        out = tool_output(tool, '--stages', trace)
        check_chrome(tool, trace)
    rows = {}
    for line in out.splitlines():
        if line.startswith('#'):
            continue
        m = ROW.match(line)
        if not m:
            raise Failed('not a stage row: %r' % line)
        rows.setdefault(m.group(1), {})[m.group(2)] = (int(m.group(3)), m.group(4), m.group(5))
    # example.mbs maps ram before there is a partition or a second mapper, then rom with both.
    want = {'total': 2, 'region_manager': 2, 'mapping_manager': 2,
            'va_mapper.eager@client/3.1': 2, 'va_mapper.eager@client/4.1': 1,
            'partition soft@client/5.1': 1, 'messaging': 2}
    got = {stage: v[0] for stage, v in rows.get('region_map', {}).items()}
    if got != want:
        raise Failed('region_map stages and counts: %r, wanted %r\n%s' % (got, want, out))
    # One thread runs everything: nothing overlaps, so the stages of the one region_remove add
    # up to its total (to the nanosecond).
    remove = rows.get('region_remove', {})
    ns = {stage: round(float(v[1]) * 1000) for stage, v in remove.items()}
    if not remove or sum(v for s, v in ns.items() if s != 'total') != ns['total']:
        raise Failed('region_remove stages do not add up to its total: %r' % ns)


def stages_warning(tool, sampled, exact):
    want = re.compile(r'^membacking-trace: warning: 1 of 2 records of .*sampled\.trace have '
                      r'interpolated times .*MEMBACKING_TRACE_TIMES=exact$')
    r = run([tool, '--stages', sampled])
    if r.returncode != 0 or not want.match(r.stderr.strip()):
        raise Failed('--stages on %s: exit %d, stderr %r' % (sampled, r.returncode, r.stderr))
    r = run([tool, '--stages', exact])
    if r.returncode != 0 or r.stderr:
        raise Failed('--stages on %s: exit %d, stderr %r' % (exact, r.returncode, r.stderr))


def main(argv):
    try:
        if len(argv) == 6 and argv[1] == 'output':
            check_output(*argv[2:])
        elif len(argv) == 4 and argv[1] == 'chrome':
            check_chrome(*argv[2:])
        elif len(argv) >= 5 and argv[1] == 'exit':
            r = run(argv[4:])
            lines = (r.stdout + r.stderr).splitlines()
            if r.returncode != int(argv[2]) or not any(re.search(argv[3], l) for l in lines):
                raise Failed('exit status %d (wanted %s); output (wanted /%s/):\n%s'
                             % (r.returncode, argv[2], argv[3], r.stdout + r.stderr))
        elif len(argv) == 6 and argv[1] == 'replay-golden':
            replay_golden(*argv[2:])
        elif len(argv) == 5 and argv[1] == 'replay-stages':
            replay_stages(*argv[2:])
        elif len(argv) == 5 and argv[1] == 'stages-warning':
            stages_warning(*argv[2:])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Failed as e:
        print('FAIL: %s' % e)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
