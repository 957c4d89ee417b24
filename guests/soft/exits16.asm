; real-mode exit guest: OUT, IN, CPUID, RDTSC, HLT, #DE (handled by own IVT entry)
bits 16
org 0x1000
start:
    mov al, 0x42
    out 0x80, al          ; IO exit (OUT)
    in al, 0x81           ; IO exit (IN)
    mov bl, al
    mov eax, 0
    cpuid                 ; CPUID exit
    mov [0x500], ebx
    rdtsc                 ; RDTSC exit when RDTSC_EXITING
    mov [0x504], eax
    ; own #DE handler in the IVT
    mov word [0*4], de_handler
    mov word [0*4+2], 0
    xor dx, dx
    xor cx, cx
    mov ax, 7
    div cx                ; #DE: exit with bit 0 in the bitmap, else own handler
after_div:
    hlt                   ; HLT exit
    mov al, 0x99
    out 0x82, al
    hlt
de_handler:
    mov byte [0x508], 1
    add sp, 0             ; handler returns past the div
    push bp
    mov bp, sp
    add word [bp+2], 2    ; skip the 2-byte div
    pop bp
    iret
