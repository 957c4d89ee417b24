; int_loop.com: the benchmark's INT n round trip. Calls INT 11h (the BIOS equipment word,
; served by the monitor) COUNT times and exits with 0.
%ifndef COUNT
%define COUNT 10000
%endif
        org 0x100
        mov cx, COUNT
.loop:  int 0x11
        loop .loop
        mov ax, 0x4C00
        int 0x21
