/*
 * ext2fs_lgpl_only.c: our own definitions of the few libext2fs symbols whose
 * e2fsprogs sources are GPL-2 (per Debian's copyright file: crc32c.c,
 * crc16.c, nls_utf8.c, and mkjournal.c through kernel-jbd.h). Defined here,
 * they are resolved before libext2fs.a is searched, so those archive members
 * are never linked into umltest (MIT OR Apache-2.0) and what is linked is
 * libext2fs' LGPL-2 part only. Written from the algorithms' definitions.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <ext2fs/ext2fs.h>

/* CRC-32C (Castagnoli), reflected, no pre/post inversion: the kernel's and
 * libext2fs' crc32c_le, which metadata_csum uses with a ~0 seed. */
static uint32_t crc32c_table[256];
/* CRC-16 (polynomial 0x8005, reflected 0xA001): uninit_bg group checksums. */
static uint16_t crc16_table[256];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void make_tables(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		uint16_t h = (uint16_t)i;
		for (int k = 0; k < 8; k++) {
			c = (c >> 1) ^ ((c & 1) ? 0x82F63B78u : 0);
			h = (uint16_t)((h >> 1) ^ ((h & 1) ? 0xA001u : 0));
		}
		crc32c_table[i] = c;
		crc16_table[i] = h;
	}
}

uint32_t ext2fs_crc32c_le(uint32_t crc, unsigned char const *p, size_t len)
{
	pthread_once(&tables_once, make_tables);
	while (len--)
		crc = (crc >> 8) ^ crc32c_table[(crc ^ *p++) & 0xff];
	return crc;
}

uint16_t ext2fs_crc16(uint16_t crc, const void *buffer, unsigned int len);
uint16_t ext2fs_crc16(uint16_t crc, const void *buffer, unsigned int len)
{
	const unsigned char *p = buffer;
	pthread_once(&tables_once, make_tables);
	while (len--)
		crc = (uint16_t)((crc >> 8) ^ crc16_table[(crc ^ *p++) & 0xff]);
	return crc;
}

/* Case-folding (casefold feature) tables are not linked: umt_open refuses
 * such filesystems, so this is reached only by ext2fs_initialize. */
const struct ext2fs_nls_table *ext2fs_load_nls_table(int encoding)
{
	(void)encoding;
	return NULL;
}

/* Zeroes num blocks from blk through the io manager's zeroout; fs == NULL is
 * libext2fs' "free your buffers" call (we keep none). */
errcode_t ext2fs_zero_blocks2(ext2_filsys fs, blk64_t blk, int num, blk64_t *ret_blk, int *ret_count)
{
	errcode_t err;
	if (!fs)
		return 0;
	if (num <= 0)
		return 0;
	err = io_channel_zeroout(fs->io, blk, (unsigned long long)num);
	if (err) {
		if (ret_blk)
			*ret_blk = blk;
		if (ret_count)
			*ret_count = num;
	}
	return err;
}
