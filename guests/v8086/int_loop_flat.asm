; int_loop_flat.bin: the bare C KVM_RUN loop's guest for bench/v8086.py. Loaded flat at 0x7C00
; in real mode, it does what int_loop.com does on the kvm real-mode route (COUNT INT 11h through
; an IVT entry at a stub "OUT 0xEE, AL; IRET": one doorbell exit each), then OUT 0xF4 and HLT.
; The loop is framed by 'S' and 'E' written to port 0x402, the markers bench/kvm_exits_loop.c
; times between.
%ifndef COUNT
%define COUNT 10000
%endif
        org 0x7C00
        xor ax, ax
        mov ds, ax
        mov word [0x11 * 4], stub
        mov [0x11 * 4 + 2], ax
        mov dx, 0x402
        mov al, 'S'
        out dx, al
        mov cx, COUNT
.loop:  int 0x11
        loop .loop
        mov al, 'E'
        out dx, al
        out 0xF4, al
        hlt
stub:   out 0xEE, al
        iret
