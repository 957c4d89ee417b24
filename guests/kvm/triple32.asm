; 32-bit protected mode with an empty IDT (limit 0): #UD cannot be delivered -> #GP -> #DF -> shutdown.
bits 32
org 0x2000
    out 0x80, al
    ud2
