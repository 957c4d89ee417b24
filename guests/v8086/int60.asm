; int60.com: calls INT 60h with AX=0041h and exits with whatever AX the service returned
; (the test's plugin service returns AH=4Ch, AL=42h).
        org 0x100
        mov ax, 0x0041
        int 0x60
        int 0x21
        mov ax, 0x4CFF
        int 0x21
