; Exit round-trip benchmark guest (real mode, loaded at 0x7C00):
;   MODE 0: COUNT x OUT 0x80 (the POST port: a device on the port bus)
;   MODE 1: COUNT x MMIO write to 0xD0000 (a device on the MMIO bus)
;   MODE 2: COUNT x IN from port 0x2E0 (no device claims it)
; then OUT 0xF4 (isa-debug-exit) and HLT. The loop is framed by two writes to port 0x402,
; 'S' before the first exit and 'E' after the last: the benchmark times the COUNT exits
; between them, so start-up and shut-down stay out of the figure on every side alike.
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
    mov dx, 0x402
    mov al, 'S'
    out dx, al
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
    mov dx, 0x402
    mov al, 'E'
    out dx, al
    mov al, 0
    out 0xF4, al
    hlt
