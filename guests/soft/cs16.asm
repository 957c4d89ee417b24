; real mode with a code segment whose base is not 0 (loaded at linear 0x11000, run as 1000:1000):
; RIP is an offset into CS, so I/O and site exits must decode and complete at CS base + RIP
bits 16
org 0x1000
start:
    xor ax, ax
    mov ds, ax
    mov al, 0x11
    out 0x80, al            ; E6 80: two bytes, completed by the engine
    in al, 0x84             ; E4 84
    mov [0x600], al
    cpuid                   ; an exit; the handler skips it
    mov eax, cr0            ; a site: read through the CR0 read shadow, emulated in place
    mov [0x604], eax
    mov dx, 0x86
    out dx, al              ; EE: one byte
    hlt
