; sensitive_loop.com: the benchmark's program. Runs COUNT iterations of CLI, STI, PUSHF, POPF
; (four sensitive instructions, each a trap in virtual-8086 mode at IOPL 0) and exits with 0.
%ifndef COUNT
%define COUNT 10000
%endif
        org 0x100
        mov cx, COUNT
.loop:  cli
        sti
        pushf
        popf
        loop .loop
        mov ax, 0x4C00
        int 0x21
