; Real-mode guest: HLT. With -DIF_SET the halt happens with interrupts enabled.
%include "hypercall.inc"
bits 16
org 0x1000
start:
        mov sp, 0x8000
%ifdef IF_SET
        sti
%else
        cli
%endif
        hlt
        ; reached once the vCPU is woken: report it
        HC2 HC_EXIT, 0x55, 0
        hlt
