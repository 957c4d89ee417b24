; Exit round-trip benchmark guest (real mode, loaded at 0x7C00):
;   MODE 0: COUNT x OUT 0x80 (the POST port: a device on the port bus)
;   MODE 1: COUNT x MMIO write to 0xD0000 (a device on the MMIO bus)
;   MODE 2: COUNT x IN from port 0x2E0 (no device claims it)
; then OUT 0xF4 (isa-debug-exit) and HLT.
%ifndef COUNT
%define COUNT 100000
%endif
%ifndef MODE
%define MODE 0
%endif
bits 16
org 0x7C00
    cli
    mov ax, 0xD000
    mov es, ax
    mov ecx, COUNT
.l:
%if MODE == 0
    out 0x80, al
%elif MODE == 1
    mov [es:0], al
%else
    mov dx, 0x2E0
    in al, dx
%endif
    dec ecx
    jnz .l
    mov al, 0
    out 0xF4, al
    hlt
