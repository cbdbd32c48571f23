// vmm.cpp: the C++ side of an out-of-tree VMM (tests/install/check_install.sh), C++17: every
// installed header compiles, and the attached loop's uv_run returns by itself once the one
// asynchronous call it made has been answered.
#include <membacking/membacking.h>
#include <membacking/mb_access.h>
#include <membacking/mb_backing.h>
#include <membacking/mb_errors.h>
#include <membacking/mb_kvm_exit.h>
#include <membacking/mb_partition.h>
#include <membacking/mb_protocol.h>
#include <membacking/mb_range.h>
#include <membacking/mb_runtime.h>
#include <uv.h>

#include <cstdio>

namespace {
struct Vmm {
  mb_mm *mm = nullptr;
  int answers = 0;
  int status = -1;
};

void on_added(void *ctx, int status, uint64_t) {
  auto *v = static_cast<Vmm *>(ctx);
  v->answers++;
  v->status = status;
}
}  // namespace

int main() {
  uv_loop_t uv;
  int err = 0;
  if (uv_loop_init(&uv)) return 1;
  mb_loop *home = mb_loop_attach(&uv, "vmm", &err);
  mb_loop *mem = mb_loop_start("mem", &err);
  if (!home || !mem) return 1;
  Vmm v;
  mb_mm_config cfg{};
  cfg.max_addr = 1ull << 30;
  cfg.loop = mem;
  if (mb_mm_create(&cfg, &v.mm)) return 2;
  mb_region_params rp{};
  rp.name = "ram";
  rp.size = 1 << 20;
  rp.priority = 255;
  mb_region_add(v.mm, &rp, on_added, &v);
  uv_run(&uv, UV_RUN_DEFAULT);
  std::printf("C++: region add: %s after %d answer(s)\n", membacking_strerror(v.status), v.answers);
  mb_mm_destroy(v.mm);
  if (mb_loop_stop(home) || mb_loop_stop(mem)) return 4;
  uv_run(&uv, UV_RUN_DEFAULT);
  mb_loop_free(home);
  mb_loop_free(mem);
  if (uv_loop_close(&uv)) return 5;
  return v.status || v.answers != 1 ? 3 : 0;
}
