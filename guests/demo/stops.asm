; A guest for the core's stop conditions, loaded flat at 0x7C00 in real mode.
;   MODE=0: print "ready" on COM1, then OUT to port 0x80 forever
;   MODE=1: print "bye", then write 7 to isa-debug-exit (QEMU status 7*2+1 = 15)
;   MODE=2: print "halt", then HLT with interrupts disabled
%ifndef MODE
%define MODE 0
%endif
bits 16
org 0x7C00
    cli
    xor ax, ax
    mov ds, ax
    mov si, msg
.print:
    lodsb
    test al, al
    jz .done
    mov dx, 0x3F8
    out dx, al
    jmp .print
.done:
%if MODE == 0
.spin:
    out 0x80, al
    jmp .spin
%elif MODE == 1
    mov al, 7
    out 0xF4, al
    jmp $
%else
    hlt
    jmp $
%endif

%if MODE == 0
msg db "ready", 10, 0
%elif MODE == 1
msg db "bye", 10, 0
%else
msg db "halt", 10, 0
%endif
