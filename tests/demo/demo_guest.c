/* demo_guest.c: the guest program, x86-64 machine code that the VMM's vCPU runs in 64-bit long
 * mode at CPL 0 (demo_kvm.c sets it up; the soft vCPU in demo_soft.c does the same steps in C).
 * It lives in the VMM's private memory, with its mailbox DEMO_GUEST_MAILBOX bytes after it
 * (demo_mailbox: cmd at +0, gpa at +8, value at +16, result at +24; for SCAN size at +32,
 * stride at +40, alt at +48, and what it counted at +56, +64, +72, +80).
 *
 * The VMM may restart it at EXEC (the command again) or at DONE (give the command up): it keeps
 * no state in registers between commands, and reloads everything from the mailbox at EXEC.
 *
 *   exec:  lea  rbx, [rip + mailbox]
 *          mov  rax, [rbx]           ; cmd
 *          mov  rdi, [rbx + 8]       ; gpa
 *          mov  rdx, [rbx + 16]      ; value
 *          cmp  rax, 1               ; READ
 *          je   read
 *          cmp  rax, 2               ; WRITE
 *          je   write
 *          cmp  rax, 3               ; WORK
 *          je   work
 *          cmp  rax, 4               ; SCAN
 *          je   scan
 *          hlt                       ; anything else (the VMM never runs it after STOP):
 *          jmp  exec                 ; KVM_EXIT_HLT, which the VMM does not expect
 *   read:  mov  rax, [rdi]           ; the guest's own load
 *          mov  [rbx + 24], rax      ; result
 *          jmp  done
 *   write: mov  [rdi], rdx           ; the guest's own store
 *          jmp  done
 *   scan:  mov  rsi, [rbx + 32]      ; size
 *          mov  r12, [rbx + 40]      ; stride
 *          mov  rcx, [rbx + 48]      ; alt
 *          xor  r8d, r8d             ; offset
 *          xor  r9d, r9d             ; loads of value
 *          xor  r10d, r10d           ; loads of alt
 *          xor  r11d, r11d           ; loads of anything else
 *   sloop: mov  rax, [rdi + r8]      ; the guest's own load
 *          cmp  rax, rdx
 *          je   sval
 *          cmp  rax, rcx
 *          je   salt
 *          inc  r11
 *          mov  [rbx + 80], rax      ; other: the last such value
 *          jmp  snext
 *   sval:  inc  r9
 *          jmp  snext
 *   salt:  inc  r10
 *   snext: add  r8, r12
 *          cmp  r8, rsi
 *          jb   sloop
 *          mov  [rbx + 56], r9       ; n_value
 *          mov  [rbx + 64], r10      ; n_alt
 *          mov  [rbx + 72], r11      ; n_other
 *          jmp  done
 *   work:  inc  qword [rdi]          ; background work: a counter in guest RAM
 *   done:  out  0xe0, al             ; the doorbell: KVM_EXIT_IO
 *          jmp  exec
 */
#include <stddef.h>

#include "demo.h"

const uint8_t demo_guest_code[] = {
    0x48, 0x8d, 0x1d, 0xf9, 0x2f, 0x00, 0x00, /* 00 exec: lea rbx, [rip + 0x2ff9] (= 0x3000) */
    0x48, 0x8b, 0x03,                         /* 07 mov rax, [rbx] */
    0x48, 0x8b, 0x7b, 0x08,                   /* 0a mov rdi, [rbx + 8] */
    0x48, 0x8b, 0x53, 0x10,                   /* 0e mov rdx, [rbx + 16] */
    0x48, 0x83, 0xf8, 0x01,                   /* 12 cmp rax, 1 */
    0x74, 0x15,                               /* 16 je 0x2d (read) */
    0x48, 0x83, 0xf8, 0x02,                   /* 18 cmp rax, 2 */
    0x74, 0x18,                               /* 1c je 0x36 (write) */
    0x48, 0x83, 0xf8, 0x03,                   /* 1e cmp rax, 3 */
    0x74, 0x64,                               /* 22 je 0x88 (work) */
    0x48, 0x83, 0xf8, 0x04,                   /* 24 cmp rax, 4 */
    0x74, 0x11,                               /* 28 je 0x3b (scan) */
    0xf4,                                     /* 2a hlt */
    0xeb, 0xd3,                               /* 2b jmp 0x00 (exec) */
    0x48, 0x8b, 0x07,                         /* 2d read: mov rax, [rdi] */
    0x48, 0x89, 0x43, 0x18,                   /* 30 mov [rbx + 24], rax */
    0xeb, 0x55,                               /* 34 jmp 0x8b (done) */
    0x48, 0x89, 0x17,                         /* 36 write: mov [rdi], rdx */
    0xeb, 0x50,                               /* 39 jmp 0x8b (done) */
    0x48, 0x8b, 0x73, 0x20,                   /* 3b scan: mov rsi, [rbx + 32] */
    0x4c, 0x8b, 0x63, 0x28,                   /* 3f mov r12, [rbx + 40] */
    0x48, 0x8b, 0x4b, 0x30,                   /* 43 mov rcx, [rbx + 48] */
    0x45, 0x31, 0xc0,                         /* 47 xor r8d, r8d */
    0x45, 0x31, 0xc9,                         /* 4a xor r9d, r9d */
    0x45, 0x31, 0xd2,                         /* 4d xor r10d, r10d */
    0x45, 0x31, 0xdb,                         /* 50 xor r11d, r11d */
    0x4a, 0x8b, 0x04, 0x07,                   /* 53 sloop: mov rax, [rdi + r8] */
    0x48, 0x39, 0xd0,                         /* 57 cmp rax, rdx */
    0x74, 0x0e,                               /* 5a je 0x6a (sval) */
    0x48, 0x39, 0xc8,                         /* 5c cmp rax, rcx */
    0x74, 0x0e,                               /* 5f je 0x6f (salt) */
    0x49, 0xff, 0xc3,                         /* 61 inc r11 */
    0x48, 0x89, 0x43, 0x50,                   /* 64 mov [rbx + 80], rax */
    0xeb, 0x08,                               /* 68 jmp 0x72 (snext) */
    0x49, 0xff, 0xc1,                         /* 6a sval: inc r9 */
    0xeb, 0x03,                               /* 6d jmp 0x72 (snext) */
    0x49, 0xff, 0xc2,                         /* 6f salt: inc r10 */
    0x4d, 0x01, 0xe0,                         /* 72 snext: add r8, r12 */
    0x49, 0x39, 0xf0,                         /* 75 cmp r8, rsi */
    0x72, 0xd9,                               /* 78 jb 0x53 (sloop) */
    0x4c, 0x89, 0x4b, 0x38,                   /* 7a mov [rbx + 56], r9 */
    0x4c, 0x89, 0x53, 0x40,                   /* 7e mov [rbx + 64], r10 */
    0x4c, 0x89, 0x5b, 0x48,                   /* 82 mov [rbx + 72], r11 */
    0xeb, 0x03,                               /* 86 jmp 0x8b (done) */
    0x48, 0xff, 0x07,                         /* 88 work: inc qword [rdi] */
    0xe6, 0xe0,                               /* 8b done: out 0xe0, al */
    0xe9, 0x6e, 0xff, 0xff, 0xff,             /* 8d jmp 0x00 (exec) */
};
const size_t demo_guest_code_size = sizeof demo_guest_code;

_Static_assert(DEMO_CMD_READ == 1 && DEMO_CMD_WRITE == 2 && DEMO_CMD_WORK == 3 &&
               DEMO_CMD_SCAN == 4, "the program compares the command with these numbers");
_Static_assert(DEMO_DOORBELL_PORT == 0xe0, "the program's OUT names the port");
_Static_assert(offsetof(demo_mailbox, result) == 24 && offsetof(demo_mailbox, size) == 32 &&
               offsetof(demo_mailbox, alt) == 48 && offsetof(demo_mailbox, n_value) == 56 &&
               offsetof(demo_mailbox, other) == 80,
               "the program reads and writes the mailbox at these offsets");
_Static_assert(DEMO_GUEST_DONE == 0x8b, "the doorbell's offset in the program");
