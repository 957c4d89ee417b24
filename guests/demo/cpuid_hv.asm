; Prints the hypervisor vendor (CPUID 0x40000000: EBX ECX EDX) and the CPU
; vendor (CPUID 0: EBX EDX ECX) on COM1, one line each, then halts.
; Used by tests/test_example_plugin.py. Loaded flat at 0x7C00, real mode.
bits 16
org 0x7C00

COM1 equ 0x3F8

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    mov eax, 0x40000000
    cpuid
    call print3             ; EBX ECX EDX
    xor eax, eax
    cpuid
    xchg ecx, edx           ; vendor order is EBX EDX ECX
    call print3
    cli
    hlt

print3:                     ; print the 12 bytes of EBX, ECX, EDX and a newline
    mov eax, ebx
    call print4
    mov eax, ecx
    call print4
    mov eax, edx
    call print4
    mov al, 10
    jmp putc

print4:                     ; print the 4 bytes of EAX, low byte first (non-printables as '.')
    push cx
    mov cx, 4
.loop:
    push ax
    cmp al, 0x20
    jb .dot
    cmp al, 0x7E
    jbe .out
.dot:
    mov al, '.'
.out:
    call putc
    pop ax
    shr eax, 8
    loop .loop
    pop cx
    ret

putc:
    push dx
    mov dx, COM1
    out dx, al
    pop dx
    ret
