/* Smart-VM hypercall ABI, guest side (C, GCC/Clang inline assembly).
 * See docs/hypercalls.md.
 *
 *   RAX/EAX  service number             result (negative: error)
 *   RBX/EBX  argument 0
 *   RCX/ECX  argument 1
 *   RSI/ESI  argument 2
 *   RDI/EDI  argument 3
 *   RDX/EDX  clobbered by the doorbell; high half of 64-bit results for 32-bit callers
 *
 * smartvm_hypercall() rings the doorbell (a 32-bit OUT to SVM_HC_PORT), which
 * works on every engine; smartvm_vmcall() uses VMCALL, which only engines
 * that hand VMCALL exits to the VMM (soft) support.
 */
#ifndef SMARTVM_HYPERCALL_H
#define SMARTVM_HYPERCALL_H

#define SVM_HC_PORT         0x5356
#define SVM_HC_SIGNATURE    0x43485653u   /* "SVHC" */
#define SVM_HC_ABI_VERSION  1

#define HC_VERSION          0x00  /* () -> ABI version */
#define HC_CONSOLE_WRITE    0x01  /* (linear address, length) -> bytes written */
#define HC_EXIT             0x02  /* (code) -> ends the run */
#define HC_TIME             0x03  /* (clock) -> nanoseconds */
#define HC_YIELD            0x04  /* () -> 0 */
#define HC_FIRST_PLUGIN     0x100

#define HC_TIME_VIRTUAL     0
#define HC_TIME_REALTIME    1

#define HC_ENOSYS           (-1000)
#define HC_EFAULT           (-14)
#define HC_EINVAL           (-22)

typedef unsigned long svm_ulong;  /* register width: 32 or 64 bits */

/* Doorbell hypercall; returns RAX. *high (if not NULL) receives RDX. */
static inline long smartvm_hypercall_hi(svm_ulong nr, svm_ulong a0, svm_ulong a1,
                                        svm_ulong a2, svm_ulong a3, svm_ulong *high)
{
    svm_ulong ret, dx;
    __asm__ __volatile__("outl %%eax, %%dx"
                         : "=a"(ret), "=d"(dx)
                         : "a"(nr), "b"(a0), "c"(a1), "S"(a2), "D"(a3), "d"(SVM_HC_PORT)
                         : "memory");
    if (high)
        *high = dx;
    return (long)ret;
}

static inline long smartvm_hypercall(svm_ulong nr, svm_ulong a0, svm_ulong a1,
                                     svm_ulong a2, svm_ulong a3)
{
    return smartvm_hypercall_hi(nr, a0, a1, a2, a3, 0);
}

/* The same through VMCALL (soft engine only). */
static inline long smartvm_vmcall(svm_ulong nr, svm_ulong a0, svm_ulong a1,
                                  svm_ulong a2, svm_ulong a3)
{
    svm_ulong ret;
    __asm__ __volatile__("vmcall"
                         : "=a"(ret)
                         : "a"(nr), "b"(a0), "c"(a1), "S"(a2), "D"(a3)
                         : "edx", "memory");
    return (long)ret;
}

static inline long smartvm_console_write(const void *buf, svm_ulong len)
{
    return smartvm_hypercall(HC_CONSOLE_WRITE, (svm_ulong)buf, len, 0, 0);
}

static inline void smartvm_exit(unsigned int code)
{
    smartvm_hypercall(HC_EXIT, code, 0, 0, 0);
}

static inline unsigned long long smartvm_time_ns(int clock)
{
    svm_ulong high = 0;
    svm_ulong low = (svm_ulong)smartvm_hypercall_hi(HC_TIME, (svm_ulong)clock, 0, 0, 0, &high);
    if (sizeof(svm_ulong) == 8)
        return low;
    return ((unsigned long long)high << 32) | low;
}

static inline long smartvm_yield(void)
{
    return smartvm_hypercall(HC_YIELD, 0, 0, 0, 0);
}

#endif /* SMARTVM_HYPERCALL_H */
