; 64-bit guest: OUT/IN, CPUID, MMIO read/write to an unbacked address, write to ROM, HLT
bits 64
org 0x1000
start:
    mov al, 0x64
    out 0x80, al
    in eax, 0x84
    mov ebx, eax
    mov rcx, 0xfe000000
    mov dword [rcx+8], 0x12345678   ; EPT violation write
    mov edx, [rcx+0x10]             ; EPT violation read
    mov r8, 0x300000
    mov byte [r8], 1                ; ROM write: EPT violation, dropped
    mov r9d, 1
    hlt
    ud2
