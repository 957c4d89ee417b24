; int_loop.com: the benchmark's INT n round trip. Calls INT 11h (the BIOS equipment word,
; served by the monitor) COUNT times and exits with 0. The loop is framed by 'S' and 'E'
; written to port 0x402, the markers the kvm benchmark times between (as its C baseline does).
%ifndef COUNT
%define COUNT 10000
%endif
        org 0x100
        mov dx, 0x402
        mov al, 'S'
        out dx, al
        mov cx, COUNT
.loop:  int 0x11
        loop .loop
        mov al, 'E'
        out dx, al
        mov ax, 0x4C00
        int 0x21
