;! ext=com
; hello.com: the README's demo. Prints its greeting through DOS (INT 21h AH=09h)
; and exits with return code 42 (INT 21h AH=4Ch).
        org 0x100
        mov ah, 0x09
        mov dx, greeting
        int 0x21
        mov ax, 0x4C2A          ; exit, return code 42
        int 0x21
greeting: db "Hello from an 8086 program!", 13, 10, "$"
