; The README demo: a real-mode guest that greets on the COM1 UART, then halts
; with interrupts disabled, which ends the run ("halted": nothing can wake it).
; Loaded flat at 0x7C00 (see examples/hello.toml).
bits 16
org 0x7C00

COM1     equ 0x3F8
LSR      equ COM1 + 5
LSR_THRE equ 0x20

start:
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    mov si, greeting
.next:
    lodsb
    test al, al
    jz .done
    mov ah, al
    mov dx, LSR
.wait:                      ; wait until the transmitter holding register is empty
    in al, dx
    test al, LSR_THRE
    jz .wait
    mov dx, COM1
    mov al, ah
    out dx, al
    jmp .next
.done:
    cli
    hlt
    jmp .done

greeting db "Hello from Smart-VM!", 13, 10, 0
