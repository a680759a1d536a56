/*
 * Entry point of the x86_64 test guest: the first byte of the image (0x100000).
 *
 * The VMM starts every vCPU here already in 64-bit long mode: paging on with
 * its identity map of 0-4 GiB (page tables at 0x90000-0x95FFF, which the
 * guest never writes), CS=0x08 a 64-bit code segment, data segments 0x10,
 * IF=0, RDI = vCPU index, RSI = vCPU count, RSP = this vCPU's stack (16-byte
 * aligned). There is no GDT or IDT in memory, so the guest loads its own GDT
 * before anything can reload a segment (an exception loads CS from the GDT).
 *
 * Interrupts stay off: returning from one in long mode takes iretq, which
 * KVM's instruction emulator (kvm_pvm) does not implement, so there is no
 * timer vector. Exceptions (vectors 0-31) need no return: they report and
 * stop the vCPU, as in the 32-bit guest.
 */
#include "guest.h"

	.code64
	.section .text.start, "ax"
	.globl _start
_start:
	cli
	cld
	cmpl	$MAX_CPUS, %edi
	jae	die			/* no GS selector for this vCPU */
	lgdt	gdt_desc(%rip)
	/* CS keeps its selector (0x08) and its hidden 64-bit descriptor: no far
	 * jump needed. The data segments are reloaded from our GDT. */
	movw	$DATA_SEL, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %fs
	movw	%ax, %ss		/* RSP is kept: the VMM's per-vCPU stack */
	leal	CPU_SEL_BASE(,%rdi,8), %eax
	movw	%ax, %gs		/* GS names this vCPU (see guest.h) */

	/* Fill the IDT's 32 exception gates (16 bytes each). Every vCPU writes
	 * the same bytes, so the race is benign. */
	xorl	%ecx, %ecx
	leaq	idt(%rip), %rdx
	leaq	isr_table(%rip), %r8
2:	movq	(%r8,%rcx,8), %rax
	movq	%rcx, %r9
	shlq	$4, %r9
	movw	%ax, (%rdx,%r9)		/* offset 15:0 */
	movw	$CODE_SEL, 2(%rdx,%r9)
	movw	$0x8E00, 4(%rdx,%r9)	/* present, DPL 0, 64-bit interrupt gate, IST 0 */
	shrq	$16, %rax
	movw	%ax, 6(%rdx,%r9)	/* offset 31:16 */
	shrq	$16, %rax
	movl	%eax, 8(%rdx,%r9)	/* offset 63:32 */
	movl	$0, 12(%rdx,%r9)
	incl	%ecx
	cmpl	$EXCEPTION_VECTORS, %ecx
	jb	2b
	lidt	idt_desc(%rip)

	/* kmain(cpu, ncpus), System V: EDI and ESI already hold them, and RSP
	 * is 16-byte aligned at the call. */
	call	kmain
die:
	cli
	hlt
	jmp	die

	.text

/* Vectors 0-31: report the exception and stop this vCPU. */
.macro ISR_NOERR n
isr\n:
	pushq	$0
	pushq	$\n
	jmp	exception_common
.endm
.macro ISR_ERR n
isr\n:
	pushq	$\n
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

/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS:
 * guest_exception(vector, error, rip), which never returns. */
exception_common:
	cld
	popq	%rdi
	popq	%rsi
	movq	(%rsp), %rdx
	andq	$-16, %rsp		/* the System V alignment at the call */
	call	guest_exception
	jmp	die

	.section .rodata
	.p2align 3
isr_table:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad	isr\n
	.endr

	.data
	.p2align 3
gdt:
	.quad	0			/* null */
	.quad	0x00AF9B000000FFFF	/* 0x08: 64-bit code (L=1, accessed bit preset) */
	.quad	0x00CF93000000FFFF	/* 0x10: flat 4 GiB data */
	.rept	MAX_CPUS
	.quad	0x00CF93000000FFFF	/* 0x18 + 8*i: flat data, vCPU i's GS */
	.endr
gdt_end:

	.p2align 3
	.skip	6			/* aligns the descriptors' base fields */
gdt_desc:
	.word	gdt_end - gdt - 1
	.quad	gdt
	.skip	6
idt_desc:
	.word	EXCEPTION_VECTORS * 16 - 1
	.quad	idt

	.p2align 4
idt:
	.fill	EXCEPTION_VECTORS * 2, 8, 0

	.section .note.GNU-stack, "", @progbits
