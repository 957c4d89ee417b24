;! ext=com
; ud.com: CPU exceptions and the program's IVT. INT 6 by software with nobody serving vector 6
; returns (a BIOS's default handler is an IRET); then UD2 raises #UD (vector 6):
;   -DHANDLER=0  the program has no handler: the monitor stops the machine, naming #UD and CS:IP
;   -DHANDLER=1  the program installs one (INT 21h AH=25h) that skips the UD2: exits with 7
%ifndef HANDLER
%define HANDLER 0
%endif
        org 0x100
        int 0x06                ; software INT 6: nobody serves it, the default handler IRETs
        mov ah, 0x09
        mov dx, msg
        int 0x21
%if HANDLER
        mov ax, 0x2506          ; DOS: set vector 6 to DS:DX
        mov dx, ud_handler
        int 0x21
%endif
        nop                     ; (an INT 6 just before UD2 would leave the same frame as the #UD)
        ud2
        mov ax, 0x4C07          ; reached only through the handler
        int 0x21
ud_handler:                     ; #UD: return past the UD2 (INT 6 by software: just return)
        push bp
        mov bp, sp
        push si
        push ds
        lds si, [bp + 2]        ; the return CS:IP
        cmp word [si], 0x0B0F   ; UD2?
        jne .done
        add word [bp + 2], 2
.done:  pop ds
        pop si
        pop bp
        iret
msg:    db "after INT 6", 13, 10, "$"
