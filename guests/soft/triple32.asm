; 32-bit: an empty IDT turns #UD into #GP, then #DF, then a triple fault
bits 32
org 0x1000
    lidt [idtr]
    out 0x80, al
    ud2
idtr: dw 0
      dd 0
