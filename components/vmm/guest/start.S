/*
 * Entry point of the test guest: the first byte of the image (0x100000).
 *
 * The VMM starts every vCPU here in 32-bit protected mode with flat segments
 * already loaded (CS=0x08, data=0x10), paging off, IF=0, EDI = vCPU index,
 * ESI = vCPU count and ESP = this vCPU's stack. There is no GDT in memory,
 * so the guest loads its own before anything can reload a segment.
 */
#include "guest.h"

	.code32
	.section .text.start, "ax"
	.globl _start
_start:
	cli
	cld
	cmpl	$MAX_CPUS, %edi
	jae	die			/* no GS selector for this vCPU */
	lgdt	gdt_desc
	ljmp	$CODE_SEL, $1f
1:	movw	$DATA_SEL, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %fs
	movw	%ax, %ss		/* ESP is kept: the VMM's per-vCPU stack */
	leal	CPU_SEL_BASE(,%edi,8), %eax
	movw	%ax, %gs		/* GS names this vCPU (see guest.h) */

	/* Fill the IDT. Every vCPU writes the same bytes, so the race is benign. */
	xorl	%ecx, %ecx
2:	movl	isr_table(,%ecx,4), %eax
	movw	%ax, idt(,%ecx,8)
	movw	$CODE_SEL, idt+2(,%ecx,8)
	movw	$0x8E00, idt+4(,%ecx,8)	/* present, DPL 0, 32-bit interrupt gate */
	shrl	$16, %eax
	movw	%ax, idt+6(,%ecx,8)
	incl	%ecx
	cmpl	$TIMER_VECTOR + 1, %ecx
	jb	2b
	lidt	idt_desc

	pushl	%esi			/* kmain(cpu, ncpus), cdecl */
	pushl	%edi
	call	kmain
	addl	$8, %esp
die:
	cli
	hlt
	jmp	die

	.text

/*
 * Vector 0x20: the per-vCPU timer. Count the tick, EOI, return.
 *
 * It returns with popfl; ret, not iret: where KVM runs the guest through its
 * instruction emulator (a software backend such as kvm_pvm, or a host without
 * unrestricted-guest support), protected-mode IRET is unimplemented and the
 * vCPU stops with KVM_EXIT_INTERNAL_ERROR. All interrupts arrive at CPL 0 on
 * the same stack (no privilege change, no task switch), so the frame is just
 * EIP, CS, EFLAGS and CS never changes: rewrite it to EFLAGS, EIP and pop it.
 */
	.globl timer_isr
timer_isr:
	pushl	%eax
	pushl	%edx
	xorl	%eax, %eax
	movw	%gs, %ax
	subl	$CPU_SEL_BASE, %eax
	shrl	$3, %eax
	incl	guest_ticks(,%eax,4)
	movw	$0x544, %dx
	outl	%eax, %dx		/* EOI (any value) */
	popl	%edx
	movl	12(%esp), %eax		/* stack: EAX, EIP, CS, EFLAGS */
	xchgl	%eax, 4(%esp)		/* EIP slot <- EFLAGS; EAX = EIP */
	movl	%eax, 8(%esp)		/* CS slot <- EIP */
	popl	%eax			/* stack: EFLAGS, EIP, EFLAGS */
	popfl				/* IF as interrupted (set) */
	ret	$4

/* Vectors 0-31: report the exception and stop this vCPU. */
.macro ISR_NOERR n
isr\n:
	pushl	$0
	pushl	$\n
	jmp	exception_common
.endm
.macro ISR_ERR n
isr\n:
	pushl	$\n
	jmp	exception_common
.endm

	ISR_NOERR 0
	ISR_NOERR 1
	ISR_NOERR 2
	ISR_NOERR 3
	ISR_NOERR 4
	ISR_NOERR 5
	ISR_NOERR 6
	ISR_NOERR 7
	ISR_ERR   8
	ISR_NOERR 9
	ISR_ERR   10
	ISR_ERR   11
	ISR_ERR   12
	ISR_ERR   13
	ISR_ERR   14
	ISR_NOERR 15
	ISR_NOERR 16
	ISR_ERR   17
	ISR_NOERR 18
	ISR_NOERR 19
	ISR_NOERR 20
	ISR_ERR   21
	ISR_NOERR 22
	ISR_NOERR 23
	ISR_NOERR 24
	ISR_NOERR 25
	ISR_NOERR 26
	ISR_NOERR 27
	ISR_NOERR 28
	ISR_ERR   29
	ISR_ERR   30
	ISR_NOERR 31

/* Stack: vector, error code, EIP, CS, EFLAGS: guest_exception(vector, error, eip). */
exception_common:
	cld
	call	guest_exception
	jmp	die

	.section .rodata
	.p2align 2
isr_table:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.long	isr\n
	.endr
	.long	timer_isr		/* vector 0x20 */

	.data
	.p2align 3
gdt:
	.quad	0			/* null */
	.quad	0x00CF9B000000FFFF	/* 0x08: flat 4 GiB code, 32-bit (accessed bit preset) */
	.quad	0x00CF93000000FFFF	/* 0x10: flat 4 GiB data */
	.rept	MAX_CPUS
	.quad	0x00CF93000000FFFF	/* 0x18 + 8*i: flat data, vCPU i's GS */
	.endr
gdt_end:

	.p2align 2
	.word	0			/* aligns the descriptors' base fields */
gdt_desc:
	.word	gdt_end - gdt - 1
	.long	gdt
	.word	0
idt_desc:
	.word	(TIMER_VECTOR + 1) * 8 - 1
	.long	idt

	.p2align 3
idt:
	.fill	TIMER_VECTOR + 1, 8, 0

	.p2align 2
	.globl guest_ticks
guest_ticks:				/* timer ticks counted, per vCPU */
	.fill	MAX_CPUS, 4, 0

	.section .note.GNU-stack, "", @progbits
