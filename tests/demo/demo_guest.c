/* demo_guest.c: the guest program, x86-64 machine code that the VMM's vCPU runs in 64-bit long
 * mode at CPL 0 (demo_kvm.c sets it up; the soft vCPU in demo_soft.c does the same steps in C).
 * It lives in the VMM's private memory, with its mailbox DEMO_GUEST_MAILBOX bytes after it
 * (demo_mailbox: cmd at +0, gpa at +8, value at +16, result at +24).
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
 *          hlt                       ; anything else (the VMM never runs it after STOP):
 *          jmp  exec                 ; KVM_EXIT_HLT, which the VMM does not expect
 *   read:  mov  rax, [rdi]           ; the guest's own load
 *          mov  [rbx + 24], rax      ; result
 *          jmp  done
 *   write: mov  [rdi], rdx           ; the guest's own store
 *          jmp  done
 *   work:  inc  qword [rdi]          ; background work: a counter in guest RAM
 *   done:  out  0xe0, al             ; the doorbell: KVM_EXIT_IO
 *          jmp  exec
 */
#include "demo.h"

const uint8_t demo_guest_code[] = {
    0x48, 0x8d, 0x1d, 0xf9, 0x2f, 0x00, 0x00, /* 00 exec: lea rbx, [rip + 0x2ff9] (= 0x3000) */
    0x48, 0x8b, 0x03,                         /* 07 mov rax, [rbx] */
    0x48, 0x8b, 0x7b, 0x08,                   /* 0a mov rdi, [rbx + 8] */
    0x48, 0x8b, 0x53, 0x10,                   /* 0e mov rdx, [rbx + 16] */
    0x48, 0x83, 0xf8, 0x01,                   /* 12 cmp rax, 1 */
    0x74, 0x0f,                               /* 16 je 0x27 (read) */
    0x48, 0x83, 0xf8, 0x02,                   /* 18 cmp rax, 2 */
    0x74, 0x12,                               /* 1c je 0x30 (write) */
    0x48, 0x83, 0xf8, 0x03,                   /* 1e cmp rax, 3 */
    0x74, 0x11,                               /* 22 je 0x35 (work) */
    0xf4,                                     /* 24 hlt */
    0xeb, 0xd9,                               /* 25 jmp 0x00 (exec) */
    0x48, 0x8b, 0x07,                         /* 27 read: mov rax, [rdi] */
    0x48, 0x89, 0x43, 0x18,                   /* 2a mov [rbx + 24], rax */
    0xeb, 0x08,                               /* 2e jmp 0x38 (done) */
    0x48, 0x89, 0x17,                         /* 30 write: mov [rdi], rdx */
    0xeb, 0x03,                               /* 33 jmp 0x38 (done) */
    0x48, 0xff, 0x07,                         /* 35 work: inc qword [rdi] */
    0xe6, 0xe0,                               /* 38 done: out 0xe0, al */
    0xeb, 0xc4,                               /* 3a jmp 0x00 (exec) */
};
const size_t demo_guest_code_size = sizeof demo_guest_code;

_Static_assert(DEMO_CMD_READ == 1 && DEMO_CMD_WRITE == 2 && DEMO_CMD_WORK == 3,
               "the program compares the command with these numbers");
_Static_assert(DEMO_DOORBELL_PORT == 0xe0, "the program's OUT names the port");
_Static_assert(sizeof(demo_mailbox) == 32, "the program reads the mailbox at these offsets");
