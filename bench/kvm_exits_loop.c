/* The bare KVM_RUN loop baseline for bench/kvm_exits.py.
 *
 * Runs a flat real-mode guest image at a load address in `mem_kib` KiB of RAM
 * and answers its exits with the least possible work: OUT and MMIO writes are
 * dropped, IN and MMIO reads return all ones. Stops at HLT or at an OUT to
 * port 0xF4 and prints "<exits> <seconds>": the exits after the guest's 'S'
 * marker (OUT to port 0x402) up to and including its 'E' marker, and the time
 * between the two marker exits (as bench/kvm_exits.py times every contender).
 *
 * usage: kvm_exits_loop IMAGE LOAD_ADDR MEM_KIB
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s IMAGE LOAD_ADDR MEM_KIB\n", argv[0]); return 2; }
    unsigned long load = strtoul(argv[2], NULL, 0);
    size_t mem_size = strtoul(argv[3], NULL, 0) * 1024;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);
    uint8_t *mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    FILE *f = fopen(argv[1], "rb");
    if (!f) die(argv[1]);
    size_t n = fread(mem + load, 1, mem_size - load, f);
    fclose(f);
    if (n == 0) die("empty image");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uint64_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");
    struct kvm_sregs sregs;
    ioctl(vcpu, KVM_GET_SREGS, &sregs);
    sregs.cs.base = 0; sregs.cs.selector = 0;
    sregs.ds = sregs.es = sregs.ss = sregs.fs = sregs.gs = sregs.cs;
    sregs.ds.type = sregs.es.type = sregs.ss.type = sregs.fs.type = sregs.gs.type = 3;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = load, .rflags = 2, .rsp = 0x7000};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    struct timespec t0 = {0}, t1 = {0};
    long exits = 0, exits_s = -1, exits_e = -1;
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR) continue;
            die("KVM_RUN");
        }
        exits++;
        if (run->exit_reason == KVM_EXIT_IO) {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction == KVM_EXIT_IO_OUT) {
                if (run->io.port == 0x402) {          /* the guest's 'S' / 'E' markers */
                    if (*data == 'S') { clock_gettime(CLOCK_MONOTONIC, &t0); exits_s = exits; }
                    else if (*data == 'E') { clock_gettime(CLOCK_MONOTONIC, &t1); exits_e = exits; }
                } else if (run->io.port == 0xF4) break;
            } else {
                memset(data, 0xFF, run->io.size * run->io.count);
            }
        } else if (run->exit_reason == KVM_EXIT_MMIO) {
            if (!run->mmio.is_write) memset(run->mmio.data, 0xFF, run->mmio.len);
        } else if (run->exit_reason == KVM_EXIT_HLT) {
            break;
        } else {
            fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
            return 1;
        }
    }
    if (exits_s < 0 || exits_e < 0) { fprintf(stderr, "the guest wrote no 'S'/'E' markers to port 0x402\n"); return 1; }
    printf("%ld %.9f\n", exits_e - exits_s, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
