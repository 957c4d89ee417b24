; Control-register accesses under VMX controls (loaded flat at 0x1000, real mode).
; The experiment owns CR0.TS and CR0.MP through the CR0 guest/host mask and
; sets CR3-load exiting. Results stay in registers, then the vCPU halts:
;   EBX = CR0 as read after setting TS and MP (the read shadow of owned bits)
;   ECX = CR0 as read after CLTS
;   EDX = CR3 as read after MOV CR3 (CR3-load exiting: the handler loaded it)
;   ESI = CR0 as read at the start
bits 16
org 0x1000
    cli
    mov eax, cr0
    mov esi, eax
    or eax, 0x0A            ; MP | TS: both owned by the VMM -> CR_ACCESS exit
    mov cr0, eax
    mov ebx, cr0            ; reads the read shadow for the owned bits
    clts                    ; TS owned -> CR_ACCESS exit (CLTS)
    mov ecx, cr0
    mov eax, 0x5000
    mov cr3, eax            ; CR3-load exiting -> CR_ACCESS exit
    mov edx, cr3
    hlt
