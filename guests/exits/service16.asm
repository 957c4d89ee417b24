; Real-mode guest: call plugin service 0x100 with arguments 1, 2, 3, 4 and
; exit with its result, plus 0x100 if RDX came back as 0x77.
; With -DPORT_FROM_CPUID the doorbell port is taken from CPUID.40000001H:EBX.
%include "hypercall.inc"
bits 16
org 0x1000
start:
        mov sp, 0x8000
%ifdef PORT_FROM_CPUID
        mov eax, 0x40000001
        cpuid
        mov bp, bx
%else
        mov bp, SVM_HC_PORT
%endif
        mov eax, HC_FIRST_PLUGIN
        mov ebx, 1
        mov ecx, 2
        mov esi, 3
        mov edi, 4
        mov dx, bp
        out dx, eax
        cmp edx, 0x77
        jne .exit
        add eax, 0x100
.exit:
        mov ebx, eax
        mov eax, HC_EXIT
        mov dx, bp
        out dx, eax
        hlt
