; kvm engine exit kinds from real mode: port I/O (8/16/32-bit, string), MMIO write/read, HLT.
; Loaded at 0x1000 in 64 KiB of RAM; 0xE0000 is unbacked (MMIO). Results stored at 0x600.
bits 16
org 0x1000
start:
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov al, 0x42
    out 0x80, al            ; OUT imm8, al
    in al, 0x81             ; IN al, imm8
    mov [0x600], al
    mov dx, 0x1234
    mov ax, 0xBEEF
    out dx, ax              ; OUT dx, ax
    in eax, dx              ; IN eax, dx
    mov [0x604], eax
    mov si, text
    mov cx, 4
    mov dx, 0x90
    cld
    rep outsb               ; string OUT, 4 bytes
    mov di, 0x610
    mov cx, 3
    mov dx, 0x91
    rep insb                ; string IN, 3 bytes
    mov ax, 0xE000
    mov es, ax
    mov dword [es:0x10], 0xCAFEF00D  ; MMIO write, 4 bytes at 0xE0010
    mov eax, [es:0x20]      ; MMIO read, 4 bytes at 0xE0020
    mov [0x608], eax
    mov al, [es:0x21]       ; MMIO read, 1 byte
    mov [0x60C], al
    hlt
    mov al, 0x99
    out 0x82, al
    hlt
text: db "ABCD"
