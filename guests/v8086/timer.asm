; timer.com: counts timer ticks through INT 08h/1Ch. It sets the PIT to 50 Hz,
; hooks INT 1Ch (INT 21h AH=25h), waits with STI; HLT until its handler counted TICKS ticks,
; checks that the BIOS tick count (INT 1Ah AH=00h) advanced with them, restores the vector
; and exits with the number of ticks counted (INT 21h AH=4Ch).
%ifndef TICKS
%define TICKS 10
%endif
        org 0x100
        mov al, 0x36            ; PIT channel 0, mode 3, divisor 23864 (50 Hz)
        out 0x43, al
        mov ax, 23864
        out 0x40, al
        mov al, ah
        out 0x40, al
        mov ax, 0x351C          ; get the old INT 1Ch vector
        int 0x21
        mov [old1c], bx
        mov [old1c + 2], es
        xor ah, ah              ; BIOS ticks before
        int 0x1A
        mov [start], dx
        mov ax, 0x251C
        mov dx, tick
        int 0x21
        sti
.wait:  hlt
        cmp word [count], TICKS
        jb .wait
        cli
        push ds
        mov ax, 0x251C
        lds dx, [old1c]
        int 0x21
        pop ds
        sti
        xor ah, ah
        int 0x1A
        sub dx, [start]
        cmp dx, TICKS
        jb bad
        mov ah, 0x09
        mov dx, okmsg
        int 0x21
        mov al, [count]
        mov ah, 0x4C
        int 0x21
bad:    mov ah, 0x09
        mov dx, badmsg
        int 0x21
        mov ax, 0x4CFF
        int 0x21
tick:   inc word [cs:count]
        iret
count:  dw 0
start:  dw 0
old1c:  dd 0
okmsg:  db "ticks counted", 13, 10, "$"
badmsg: db "BIOS tick count did not advance", 13, 10, "$"
