; The same unclaimed-port read loop as bench_exits.asm MODE 2, as a 64 KiB BIOS image for
; qemu-system-x86_64 -bios: COUNT x IN from port 0x2E0, then isa-debug-exit at 0xF4. The same
; 'S'/'E' writes to port 0x402 (an isa-debugcon there) frame the loop.
%ifndef COUNT
%define COUNT 100000
%endif
bits 16
org 0
start:
    cli
    mov dx, 0x402
    mov al, 'S'
    out dx, al
    mov ecx, COUNT
.l:
    mov dx, 0x2E0
    in al, dx
    dec ecx
    jnz .l
    mov dx, 0x402
    mov al, 'E'
    out dx, al
    mov al, 0
    out 0xF4, al
    hlt
    jmp $
    times 0xFFF0 - ($ - $$) db 0
reset:
    jmp 0xF000:start       ; the reset vector (F000:FFF0)
    times 0x10000 - ($ - $$) db 0
