; software interrupts and exceptions in real mode: INT 5 and INT 6 return to the next
; instruction (the handler reports the return IP on port 0x80); INT3 at `brk`; then an
; OUT 0x81 after which a handler may change the controls, and RDTSC right behind it
bits 16
org 0x1000
start:
    mov word [5 * 4], report
    mov word [5 * 4 + 2], 0
    mov word [6 * 4], report
    mov word [6 * 4 + 2], 0
    mov word [3 * 4], report
    mov word [3 * 4 + 2], 0
    mov sp, 0x8000
    int 5
after5:
    int 6
after6:
brk:
    int3
after3:
    out 0x81, al
    rdtsc
    hlt
report:
    mov bp, sp
    mov ax, [bp]                ; the return IP the CPU pushed
    out 0x80, ax
    iret
