; Real-mode guest exercising the hypercall ABI through the doorbell (and VMCALL with -DUSE_VMCALL).
; Loaded flat at 0x1000 with CS = DS = 0, so offsets are linear addresses.
; Exit codes: 0x42 all good; 0x90+n: check n failed.
%include "hypercall.inc"
bits 16
org 0x1000
start:
        mov sp, 0x8000
        ; 1: the doorbell answers a 32-bit IN with its signature
        mov dx, SVM_HC_PORT
        in eax, dx
        cmp eax, SVM_HC_SIGNATURE
        jne fail1
        ; 2: version
        mov eax, HC_VERSION
        HYPERCALL
        cmp eax, SVM_HC_ABI_VERSION
        jne fail2
        ; 3: console write through the doorbell
        HC2 HC_CONSOLE_WRITE, msg_doorbell, msg_doorbell_len
        cmp eax, msg_doorbell_len
        jne fail3
%ifdef USE_VMCALL
        ; 4: the same through VMCALL
        mov eax, HC_CONSOLE_WRITE
        mov ebx, msg_vmcall
        mov ecx, msg_vmcall_len
        HYPERCALL_VMCALL
        cmp eax, msg_vmcall_len
        jne fail4
%endif
        ; 5: an unknown service
        mov eax, 0x1234
        HYPERCALL
        cmp eax, HC_ENOSYS
        jne fail5
        ; 6: a bad guest address
        HC2 HC_CONSOLE_WRITE, 0xE0000000, 16
        cmp eax, HC_EFAULT
        jne fail6
        ; 7: time goes forward (virtual clock, 64-bit value in edx:eax)
        HC2 HC_TIME, HC_TIME_VIRTUAL, 0
        mov esi, eax
        mov edi, edx
        HC2 HC_TIME, HC_TIME_VIRTUAL, 0
        cmp edx, edi
        jb fail7
        ja .later
        cmp eax, esi
        jb fail7
.later:
        ; 8: a bad clock id
        HC2 HC_TIME, 7, 0
        cmp eax, HC_EINVAL
        jne fail8
        ; 9: yield
        mov eax, HC_YIELD
        HYPERCALL
        test eax, eax
        jnz fail9
        ; registers other than eax/edx are preserved
        mov ebx, 0x11223344
        mov esi, 0x55667788
        mov eax, HC_YIELD
        HYPERCALL
        cmp ebx, 0x11223344
        jne fail9
        cmp esi, 0x55667788
        jne fail9
        HC2 HC_EXIT, 0x42, 0
        hlt
        jmp $

%assign n 1
%rep 9
fail %+ n %+ :
        HC2 HC_EXIT, 0x90 + n, 0
        hlt
%assign n n+1
%endrep

msg_doorbell: db "hello via doorbell", 10
msg_doorbell_len equ $ - msg_doorbell
msg_vmcall: db "hello via vmcall", 10
msg_vmcall_len equ $ - msg_vmcall
