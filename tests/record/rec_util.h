/* rec_util.h: what the recording tests share: a recording replays (membacking-replay, in both
 * layouts), and a temporary file for it. */
#ifndef REC_UTIL_H
#define REC_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* The recording at path replays and passes in both layouts (replay NULL: not checked). */
static inline void rec_check_replays(const char *replay, const char *path) {
  if (!replay) return;
  for (int spread = 0; spread < 2; spread++) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' --quiet --layout=%s '%s' >/dev/null", replay,
             spread ? "spread" : "single", path);
    int rc = system(cmd);
    assert_true(WIFEXITED(rc));
    assert_int_equal(WEXITSTATUS(rc), 0);
  }
}

/* Makes the empty file path (a mkstemp template). */
static inline void rec_tmp_file(char *path) {
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
}

#endif
