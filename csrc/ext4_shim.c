/*
 * ext4_shim.c: the C side of umltest's ext4 module (src/guestfs/ext4.rs).
 *
 * libext2fs (e2fsprogs, LGPL-2 library) does the filesystem work; this file
 * only (1) gives it an io_manager whose reads and writes call back into Rust,
 * so every block lands in the guest's BlockDevice (and so in its COW file),
 * and (2) wraps the multi-step libext2fs sequences (create = new inode +
 * link + extent header + alloc stats, ...) behind calls with plain types.
 * The call sequences follow e2fsprogs' own users (misc/create_inode.c,
 * debugfs); the code is written here.
 *
 * Every timestamp is fs->now, set by the caller from the virtual clock: no
 * call below reads the host clock once fs->now is set.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>

typedef int (*umt_read_fn)(void *ctx, uint64_t off, void *buf, size_t len);
typedef int (*umt_write_fn)(void *ctx, uint64_t off, const void *buf, size_t len);
typedef int (*umt_flush_fn)(void *ctx);

struct umt_dev {
	void *ctx;
	umt_read_fn read;
	umt_write_fn write;
	umt_flush_fn flush;
};

/* ---- io manager ---------------------------------------------------- */

static errcode_t umt_io_open(const char *name, int flags, io_channel *channel);

static errcode_t umt_io_close(io_channel ch)
{
	if (--ch->refcount > 0)
		return 0;
	ext2fs_free_mem(&ch->name);
	ext2fs_free_mem(&ch);
	return 0;
}

static errcode_t umt_io_set_blksize(io_channel ch, int blksize)
{
	ch->block_size = blksize;
	return 0;
}

/* count < 0 means -count bytes (libext2fs' convention), else blocks. */
static size_t umt_len(io_channel ch, int count)
{
	return count < 0 ? (size_t)(-count) : (size_t)count * (size_t)ch->block_size;
}

static errcode_t umt_io_read64(io_channel ch, unsigned long long block, int count, void *data)
{
	struct umt_dev *d = ch->private_data;
	int e = d->read(d->ctx, block * (uint64_t)ch->block_size, data, umt_len(ch, count));
	return e ? EXT2_ET_SHORT_READ : 0;
}

static errcode_t umt_io_write64(io_channel ch, unsigned long long block, int count, const void *data)
{
	struct umt_dev *d = ch->private_data;
	int e = d->write(d->ctx, block * (uint64_t)ch->block_size, data, umt_len(ch, count));
	return e ? EXT2_ET_SHORT_WRITE : 0;
}

static errcode_t umt_io_read(io_channel ch, unsigned long block, int count, void *data)
{
	return umt_io_read64(ch, block, count, data);
}

static errcode_t umt_io_write(io_channel ch, unsigned long block, int count, const void *data)
{
	return umt_io_write64(ch, block, count, data);
}

static errcode_t umt_io_write_byte(io_channel ch, unsigned long offset, int count, const void *data)
{
	struct umt_dev *d = ch->private_data;
	if (count < 0)
		return EXT2_ET_INVALID_ARGUMENT;
	return d->write(d->ctx, offset, data, (size_t)count) ? EXT2_ET_SHORT_WRITE : 0;
}

static errcode_t umt_io_flush(io_channel ch)
{
	struct umt_dev *d = ch->private_data;
	return d->flush(d->ctx) ? EXT2_ET_SHORT_WRITE : 0;
}

static errcode_t umt_io_set_option(io_channel ch, const char *option, const char *arg)
{
	(void)ch; (void)option; (void)arg;
	return EXT2_ET_INVALID_ARGUMENT;
}

static errcode_t umt_io_zeroout(io_channel ch, unsigned long long block, unsigned long long count)
{
	static const char zeros[4096];
	struct umt_dev *d = ch->private_data;
	uint64_t off = block * (uint64_t)ch->block_size;
	uint64_t len = count * (uint64_t)ch->block_size;
	while (len) {
		size_t n = len < sizeof(zeros) ? (size_t)len : sizeof(zeros);
		if (d->write(d->ctx, off, zeros, n))
			return EXT2_ET_SHORT_WRITE;
		off += n;
		len -= n;
	}
	return 0;
}

static struct struct_io_manager umt_io_manager = {
	.magic = EXT2_ET_MAGIC_IO_MANAGER,
	.name = "umltest BlockDevice",
	.open = umt_io_open,
	.close = umt_io_close,
	.set_blksize = umt_io_set_blksize,
	.read_blk = umt_io_read,
	.write_blk = umt_io_write,
	.flush = umt_io_flush,
	.write_byte = umt_io_write_byte,
	.set_option = umt_io_set_option,
	.read_blk64 = umt_io_read64,
	.write_blk64 = umt_io_write64,
	.zeroout = umt_io_zeroout,
};

/* The "name" libext2fs passes to open is the address of a struct umt_dev,
 * printed with %p by umt_open: no global state, any number of filesystems. */
static errcode_t umt_io_open(const char *name, int flags, io_channel *channel)
{
	io_channel ch;
	void *p = NULL;
	errcode_t err;
	(void)flags;
	if (!name || sscanf(name, "%p", &p) != 1 || !p)
		return EXT2_ET_BAD_DEVICE_NAME;
	err = ext2fs_get_memzero(sizeof(*ch), &ch);
	if (err)
		return err;
	ch->magic = EXT2_ET_MAGIC_IO_CHANNEL;
	ch->manager = &umt_io_manager;
	err = ext2fs_get_mem(strlen(name) + 1, &ch->name);
	if (err) {
		ext2fs_free_mem(&ch);
		return err;
	}
	strcpy(ch->name, name);
	ch->block_size = 1024;
	ch->refcount = 1;
	ch->private_data = p;
	*channel = ch;
	return 0;
}

/* ---- filesystem ---------------------------------------------------- */

struct umt_fs {
	ext2_filsys fs;
	struct umt_dev dev;
	int bitmaps_loaded;
};

errcode_t umt_open(void *ctx, umt_read_fn r, umt_write_fn w, umt_flush_fn f,
		   int rw, struct umt_fs **out)
{
	struct umt_fs *u;
	char name[64];
	errcode_t err;
	int flags = EXT2_FLAG_64BITS;

	u = calloc(1, sizeof(*u));
	if (!u)
		return ENOMEM;
	u->dev.ctx = ctx;
	u->dev.read = r;
	u->dev.write = w;
	u->dev.flush = f;
	snprintf(name, sizeof(name), "%p", (void *)&u->dev);
	if (rw)
		flags |= EXT2_FLAG_RW;
	err = ext2fs_open2(name, NULL, flags, 0, 0, &umt_io_manager, &u->fs);
	if (err) {
		free(u);
		return err;
	}
	u->fs->umask = 0;
	/* Case-folding tables are not linked (GPL-2 source, see
	 * ext2fs_lgpl_only.c): refuse rather than hash names wrongly. */
	if (ext2fs_has_feature_casefold(u->fs->super)) {
		ext2fs_free(u->fs);
		free(u);
		return EXT2_ET_UNSUPP_FEATURE;
	}
	*out = u;
	return 0;
}

/* Superblock facts the Rust side checks before allowing writes. */
void umt_info(struct umt_fs *u, uint32_t *block_size, uint64_t *blocks, uint64_t *free_blocks,
	      uint32_t *inodes, uint32_t *free_inodes, uint32_t *feature_incompat,
	      uint32_t *feature_ro_compat, uint32_t *feature_compat, uint16_t *state)
{
	struct ext2_super_block *sb = u->fs->super;
	*block_size = u->fs->blocksize;
	*blocks = ext2fs_blocks_count(sb);
	*free_blocks = ext2fs_free_blocks_count(sb);
	*inodes = sb->s_inodes_count;
	*free_inodes = sb->s_free_inodes_count;
	*feature_incompat = sb->s_feature_incompat;
	*feature_ro_compat = sb->s_feature_ro_compat;
	*feature_compat = sb->s_feature_compat;
	*state = sb->s_state;
}

void umt_set_now(struct umt_fs *u, int64_t now)
{
	u->fs->now = (time_t)now;
}

/* Bitmaps are read on the first change only: a filesystem that is only
 * read costs its superblock and group descriptors. */
static errcode_t umt_need_bitmaps(struct umt_fs *u)
{
	errcode_t err;
	if (u->bitmaps_loaded)
		return 0;
	err = ext2fs_read_bitmaps(u->fs);
	if (!err)
		u->bitmaps_loaded = 1;
	return err;
}

errcode_t umt_flush(struct umt_fs *u)
{
	if (!(u->fs->flags & EXT2_FLAG_RW) || !(u->fs->flags & EXT2_FLAG_DIRTY))
		return 0;
	return ext2fs_flush(u->fs);
}

/* Frees without flushing: what a crash (kill) leaves on the device. */
void umt_abandon(struct umt_fs *u)
{
	if (!u)
		return;
	u->fs->flags &= ~EXT2_FLAG_DIRTY;
	ext2fs_free(u->fs);
	free(u);
}

errcode_t umt_lookup(struct umt_fs *u, uint32_t dir, const char *name, int len, uint32_t *ino)
{
	return ext2fs_lookup(u->fs, dir, name, len, NULL, ino);
}

struct umt_stat {
	uint32_t ino;
	uint16_t mode;
	uint16_t nlink;
	uint32_t uid;
	uint32_t gid;
	uint64_t size;
	uint64_t blocks512;
	int64_t atime, mtime, ctime, crtime;
	uint32_t atime_ns, mtime_ns, ctime_ns, crtime_ns;
	uint32_t flags;
};

static void umt_get_time(uint32_t lo, uint32_t extra, int have_extra, int64_t *sec, uint32_t *ns)
{
	int64_t s = (int32_t)lo;
	if (have_extra) {
		s += (int64_t)(extra & EXT4_EPOCH_MASK) << 32;
		*ns = extra >> EXT4_EPOCH_BITS;
	} else {
		*ns = 0;
	}
	*sec = s;
}

static void umt_put_time(uint32_t *lo, uint32_t *extra, int have_extra, int64_t sec, uint32_t ns)
{
	*lo = (uint32_t)sec;
	if (have_extra)
		*extra = (uint32_t)(((sec - (int32_t)(uint32_t)sec) >> 32) & EXT4_EPOCH_MASK) |
			 (ns << EXT4_EPOCH_BITS);
}

#define HAS_EXTRA(in, field) \
	((in)->i_extra_isize >= offsetof(struct ext2_inode_large, field) + sizeof((in)->field) - EXT2_GOOD_OLD_INODE_SIZE)

static errcode_t umt_read_large(struct umt_fs *u, uint32_t ino, struct ext2_inode_large *in)
{
	memset(in, 0, sizeof(*in));
	return ext2fs_read_inode_full(u->fs, ino, (struct ext2_inode *)in, sizeof(*in));
}

static errcode_t umt_write_large(struct umt_fs *u, uint32_t ino, struct ext2_inode_large *in)
{
	return ext2fs_write_inode_full(u->fs, ino, (struct ext2_inode *)in, sizeof(*in));
}

errcode_t umt_stat(struct umt_fs *u, uint32_t ino, struct umt_stat *st)
{
	struct ext2_inode_large in;
	errcode_t err = umt_read_large(u, ino, &in);
	if (err)
		return err;
	memset(st, 0, sizeof(*st));
	st->ino = ino;
	st->mode = in.i_mode;
	st->nlink = in.i_links_count;
	st->uid = inode_uid(in);
	st->gid = inode_gid(in);
	st->size = EXT2_I_SIZE(&in);
	st->blocks512 = ext2fs_get_stat_i_blocks(u->fs, (struct ext2_inode *)&in);
	st->flags = in.i_flags;
	umt_get_time(in.i_atime, in.i_atime_extra, HAS_EXTRA(&in, i_atime_extra), &st->atime, &st->atime_ns);
	umt_get_time(in.i_mtime, in.i_mtime_extra, HAS_EXTRA(&in, i_mtime_extra), &st->mtime, &st->mtime_ns);
	umt_get_time(in.i_ctime, in.i_ctime_extra, HAS_EXTRA(&in, i_ctime_extra), &st->ctime, &st->ctime_ns);
	if (HAS_EXTRA(&in, i_crtime_extra))
		umt_get_time(in.i_crtime, in.i_crtime_extra, 1, &st->crtime, &st->crtime_ns);
	return 0;
}

/* which: bit 0 mode, 1 uid, 2 gid, 3 atime, 4 mtime; ctime always = now. */
errcode_t umt_setattr(struct umt_fs *u, uint32_t ino, int which, uint16_t mode, uint32_t uid,
		      uint32_t gid, int64_t atime, uint32_t atime_ns, int64_t mtime, uint32_t mtime_ns)
{
	struct ext2_inode_large in;
	errcode_t err = umt_read_large(u, ino, &in);
	if (err)
		return err;
	if (which & 1)
		in.i_mode = (in.i_mode & LINUX_S_IFMT) | (mode & 07777);
	if (which & 2) {
		in.i_uid = uid & 0xffff;
		ext2fs_set_i_uid_high(in, uid >> 16);
	}
	if (which & 4) {
		in.i_gid = gid & 0xffff;
		ext2fs_set_i_gid_high(in, gid >> 16);
	}
	if (which & 8)
		umt_put_time(&in.i_atime, &in.i_atime_extra, HAS_EXTRA(&in, i_atime_extra), atime, atime_ns);
	if (which & 16)
		umt_put_time(&in.i_mtime, &in.i_mtime_extra, HAS_EXTRA(&in, i_mtime_extra), mtime, mtime_ns);
	umt_put_time(&in.i_ctime, &in.i_ctime_extra, HAS_EXTRA(&in, i_ctime_extra), u->fs->now, 0);
	return umt_write_large(u, ino, &in);
}

static errcode_t umt_touch(struct umt_fs *u, uint32_t ino, int mtime_too)
{
	struct ext2_inode_large in;
	errcode_t err = umt_read_large(u, ino, &in);
	if (err)
		return err;
	umt_put_time(&in.i_ctime, &in.i_ctime_extra, HAS_EXTRA(&in, i_ctime_extra), u->fs->now, 0);
	if (mtime_too)
		umt_put_time(&in.i_mtime, &in.i_mtime_extra, HAS_EXTRA(&in, i_mtime_extra), u->fs->now, 0);
	return umt_write_large(u, ino, &in);
}

errcode_t umt_read(struct umt_fs *u, uint32_t ino, uint64_t off, void *buf, uint32_t len, uint32_t *got)
{
	ext2_file_t f;
	errcode_t err, err2;
	unsigned int n = 0;
	*got = 0;
	err = ext2fs_file_open(u->fs, ino, 0, &f);
	if (err)
		return err;
	err = ext2fs_file_llseek(f, off, EXT2_SEEK_SET, NULL);
	if (!err)
		err = ext2fs_file_read(f, buf, len, &n);
	err2 = ext2fs_file_close(f);
	*got = n;
	return err ? err : err2;
}

errcode_t umt_write(struct umt_fs *u, uint32_t ino, uint64_t off, const void *buf, uint32_t len)
{
	ext2_file_t f;
	errcode_t err, err2;
	unsigned int n = 0;
	uint32_t done = 0;
	err = umt_need_bitmaps(u);
	if (err)
		return err;
	err = ext2fs_file_open(u->fs, ino, EXT2_FILE_WRITE, &f);
	if (err)
		return err;
	err = ext2fs_file_llseek(f, off, EXT2_SEEK_SET, NULL);
	while (!err && done < len) {
		err = ext2fs_file_write(f, (const char *)buf + done, len - done, &n);
		if (!err && n == 0)
			err = EXT2_ET_SHORT_WRITE;
		done += n;
	}
	/* file_write grows i_size in memory; file_close writes the inode. */
	err2 = ext2fs_file_close(f);
	if (!err)
		err = err2;
	if (!err)
		err = umt_touch(u, ino, 1);
	return err;
}

errcode_t umt_truncate(struct umt_fs *u, uint32_t ino, uint64_t size)
{
	ext2_file_t f;
	errcode_t err, err2;
	err = umt_need_bitmaps(u);
	if (err)
		return err;
	err = ext2fs_file_open(u->fs, ino, EXT2_FILE_WRITE, &f);
	if (err)
		return err;
	err = ext2fs_file_set_size2(f, size);
	err2 = ext2fs_file_close(f);
	if (!err)
		err = err2;
	if (!err)
		err = umt_touch(u, ino, 1);
	return err;
}

static int umt_ftype(uint16_t mode)
{
	switch (mode & LINUX_S_IFMT) {
	case LINUX_S_IFREG: return EXT2_FT_REG_FILE;
	case LINUX_S_IFDIR: return EXT2_FT_DIR;
	case LINUX_S_IFLNK: return EXT2_FT_SYMLINK;
	case LINUX_S_IFCHR: return EXT2_FT_CHRDEV;
	case LINUX_S_IFBLK: return EXT2_FT_BLKDEV;
	case LINUX_S_IFIFO: return EXT2_FT_FIFO;
	case LINUX_S_IFSOCK: return EXT2_FT_SOCK;
	}
	return EXT2_FT_UNKNOWN;
}

static errcode_t umt_link_expand(struct umt_fs *u, uint32_t dir, const char *name, uint32_t ino, int ftype)
{
	errcode_t err = ext2fs_link(u->fs, dir, name, ino, ftype);
	if (err == EXT2_ET_DIR_NO_SPACE) {
		err = ext2fs_expand_dir(u->fs, dir);
		if (err)
			return err;
		err = ext2fs_link(u->fs, dir, name, ino, ftype);
	}
	return err;
}

/* A new regular file (or fifo, socket: no data) named `name` in `dir`. */
errcode_t umt_create(struct umt_fs *u, uint32_t dir, const char *name, uint16_t mode, uint32_t uid,
		     uint32_t gid, uint32_t *out)
{
	struct ext2_inode_large in;
	ext2_ino_t ino;
	errcode_t err = umt_need_bitmaps(u);
	if (err)
		return err;
	err = ext2fs_new_inode(u->fs, dir, mode, 0, &ino);
	if (err)
		return err;
	err = umt_link_expand(u, dir, name, ino, umt_ftype(mode));
	if (err)
		return err;
	memset(&in, 0, sizeof(in));
	in.i_mode = mode;
	in.i_links_count = 1;
	in.i_extra_isize = sizeof(struct ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE;
	in.i_uid = uid & 0xffff;
	ext2fs_set_i_uid_high(in, uid >> 16);
	in.i_gid = gid & 0xffff;
	ext2fs_set_i_gid_high(in, gid >> 16);
	if (ext2fs_has_feature_extents(u->fs->super) && LINUX_S_ISREG(mode)) {
		ext2_extent_handle_t h;
		err = ext2fs_extent_open2(u->fs, ino, (struct ext2_inode *)&in, &h);
		if (err)
			return err;
		ext2fs_extent_free(h);
	}
	/* write_new_inode sets a, c, m and crtime to fs->now. */
	err = ext2fs_write_new_inode(u->fs, ino, (struct ext2_inode *)&in);
	if (err)
		return err;
	ext2fs_inode_alloc_stats2(u->fs, ino, 1, 0);
	err = umt_touch(u, dir, 1);
	*out = ino;
	return err;
}

errcode_t umt_mkdir(struct umt_fs *u, uint32_t dir, const char *name, uint16_t mode, uint32_t uid,
		    uint32_t gid, uint32_t *out)
{
	ext2_ino_t ino;
	errcode_t err = umt_need_bitmaps(u);
	if (err)
		return err;
	err = ext2fs_new_inode(u->fs, dir, LINUX_S_IFDIR | 0755, 0, &ino);
	if (err)
		return err;
	err = ext2fs_mkdir(u->fs, dir, ino, name);
	if (err == EXT2_ET_DIR_NO_SPACE) {
		err = ext2fs_expand_dir(u->fs, dir);
		if (err)
			return err;
		err = ext2fs_mkdir(u->fs, dir, ino, name);
	}
	if (err)
		return err;
	err = umt_setattr(u, ino, 1 | 2 | 4, mode, uid, gid, 0, 0, 0, 0);
	if (!err)
		err = umt_touch(u, dir, 1);
	*out = ino;
	return err;
}

errcode_t umt_symlink(struct umt_fs *u, uint32_t dir, const char *name, const char *target,
		      uint32_t uid, uint32_t gid, uint32_t *out)
{
	ext2_ino_t ino;
	errcode_t err = umt_need_bitmaps(u);
	if (err)
		return err;
	err = ext2fs_new_inode(u->fs, dir, LINUX_S_IFLNK | 0777, 0, &ino);
	if (err)
		return err;
	err = ext2fs_symlink(u->fs, dir, ino, name, target);
	if (err == EXT2_ET_DIR_NO_SPACE) {
		err = ext2fs_expand_dir(u->fs, dir);
		if (err)
			return err;
		err = ext2fs_symlink(u->fs, dir, ino, name, target);
	}
	if (err)
		return err;
	err = umt_setattr(u, ino, 2 | 4, 0, uid, gid, 0, 0, 0, 0);
	if (!err)
		err = umt_touch(u, dir, 1);
	*out = ino;
	return err;
}

errcode_t umt_readlink(struct umt_fs *u, uint32_t ino, char *buf, uint32_t cap, uint32_t *len)
{
	struct ext2_inode_large in;
	errcode_t err = umt_read_large(u, ino, &in);
	uint64_t size;
	if (err)
		return err;
	if (!LINUX_S_ISLNK(in.i_mode))
		return EXT2_ET_INVALID_ARGUMENT;
	size = EXT2_I_SIZE(&in);
	if (size > cap)
		size = cap;
	if (ext2fs_is_fast_symlink((struct ext2_inode *)&in)) {
		memcpy(buf, (char *)in.i_block, size);
		*len = (uint32_t)size;
		return 0;
	}
	return umt_read(u, ino, 0, buf, (uint32_t)size, len);
}

/* One more name for ino (a hard link). */
errcode_t umt_link(struct umt_fs *u, uint32_t dir, const char *name, uint32_t ino)
{
	struct ext2_inode_large in;
	errcode_t err = umt_need_bitmaps(u);
	if (err)
		return err;
	err = umt_read_large(u, ino, &in);
	if (err)
		return err;
	err = umt_link_expand(u, dir, name, ino, umt_ftype(in.i_mode));
	if (err)
		return err;
	in.i_links_count++;
	umt_put_time(&in.i_ctime, &in.i_ctime_extra, HAS_EXTRA(&in, i_ctime_extra), u->fs->now, 0);
	err = umt_write_large(u, ino, &in);
	if (!err)
		err = umt_touch(u, dir, 1);
	return err;
}

/* Drops `drop` links of ino; frees it (blocks, xattrs, the inode) at 0. */
static errcode_t umt_put_inode(struct umt_fs *u, uint32_t ino, int drop)
{
	struct ext2_inode_large in;
	errcode_t err = umt_read_large(u, ino, &in);
	if (err)
		return err;
	in.i_links_count = in.i_links_count > drop ? in.i_links_count - drop : 0;
	umt_put_time(&in.i_ctime, &in.i_ctime_extra, HAS_EXTRA(&in, i_ctime_extra), u->fs->now, 0);
	if (in.i_links_count == 0) {
		in.i_dtime = (uint32_t)u->fs->now;
		err = ext2fs_free_ext_attr(u->fs, ino, &in);
		if (err)
			return err;
		if (ext2fs_inode_has_valid_blocks2(u->fs, (struct ext2_inode *)&in)) {
			err = ext2fs_punch(u->fs, ino, (struct ext2_inode *)&in, NULL, 0, ~0ULL);
			if (err)
				return err;
		}
		ext2fs_inode_alloc_stats2(u->fs, ino, -1, LINUX_S_ISDIR(in.i_mode));
	}
	return umt_write_large(u, ino, &in);
}

/* Removes the entry name -> ino from dir; is_dir also drops the child's
 * "." link and the parent's ".." link. The caller checked emptiness. */
errcode_t umt_unlink(struct umt_fs *u, uint32_t dir, const char *name, uint32_t ino, int is_dir)
{
	errcode_t err = umt_need_bitmaps(u);
	if (err)
		return err;
	err = ext2fs_unlink(u->fs, dir, name, ino, 0);
	if (err)
		return err;
	err = umt_put_inode(u, ino, is_dir ? 2 : 1);
	if (err)
		return err;
	if (is_dir) {
		struct ext2_inode_large p;
		err = umt_read_large(u, dir, &p);
		if (err)
			return err;
		if (p.i_links_count > 1)
			p.i_links_count--;
		err = umt_write_large(u, dir, &p);
		if (err)
			return err;
	}
	return umt_touch(u, dir, 1);
}

/* Rename support: point an existing entry at another inode (rename over an
 * existing name) and fix a moved directory's "..". */
struct umt_dotdot {
	uint32_t new_parent;
	int done;
};

static int umt_dotdot_proc(ext2_ino_t dir, int entry, struct ext2_dir_entry *de, int offset,
			   int blocksize, char *buf, void *priv)
{
	struct umt_dotdot *p = priv;
	(void)dir; (void)offset; (void)blocksize; (void)buf;
	if (entry == DIRENT_DOT_DOT_FILE) {
		de->inode = p->new_parent;
		p->done = 1;
		return DIRENT_CHANGED | DIRENT_ABORT;
	}
	return 0;
}

errcode_t umt_set_dotdot(struct umt_fs *u, uint32_t dir, uint32_t new_parent)
{
	struct umt_dotdot p = { new_parent, 0 };
	errcode_t err = ext2fs_dir_iterate2(u->fs, dir, DIRENT_FLAG_INCLUDE_EMPTY, NULL, umt_dotdot_proc, &p);
	if (err)
		return err;
	return p.done ? 0 : EXT2_ET_DIR_CORRUPTED;
}

/* Link-count bookkeeping rename needs without freeing anything. */
errcode_t umt_adjust_links(struct umt_fs *u, uint32_t ino, int delta)
{
	struct ext2_inode_large in;
	errcode_t err = umt_read_large(u, ino, &in);
	if (err)
		return err;
	in.i_links_count = (uint16_t)((int)in.i_links_count + delta);
	umt_put_time(&in.i_ctime, &in.i_ctime_extra, HAS_EXTRA(&in, i_ctime_extra), u->fs->now, 0);
	return umt_write_large(u, ino, &in);
}

errcode_t umt_link_only(struct umt_fs *u, uint32_t dir, const char *name, uint32_t ino, uint16_t mode)
{
	errcode_t err = umt_need_bitmaps(u);
	if (err)
		return err;
	err = umt_link_expand(u, dir, name, ino, umt_ftype(mode));
	if (!err)
		err = umt_touch(u, dir, 1);
	return err;
}

errcode_t umt_unlink_only(struct umt_fs *u, uint32_t dir, const char *name)
{
	errcode_t err = umt_need_bitmaps(u);
	if (err)
		return err;
	err = ext2fs_unlink(u->fs, dir, name, 0, 0);
	if (!err)
		err = umt_touch(u, dir, 1);
	return err;
}

typedef int (*umt_dirent_fn)(void *priv, const char *name, uint32_t len, uint32_t ino, uint32_t ftype);

struct umt_iter {
	umt_dirent_fn fn;
	void *priv;
};

static int umt_iter_proc(ext2_ino_t dir, int entry, struct ext2_dir_entry *de, int offset,
			 int blocksize, char *buf, void *priv)
{
	struct umt_iter *it = priv;
	(void)dir; (void)entry; (void)offset; (void)blocksize; (void)buf;
	if (de->inode == 0)
		return 0;
	if (it->fn(it->priv, de->name, ext2fs_dirent_name_len(de), de->inode, ext2fs_dirent_file_type(de)))
		return DIRENT_ABORT;
	return 0;
}

errcode_t umt_readdir(struct umt_fs *u, uint32_t dir, umt_dirent_fn fn, void *priv)
{
	struct umt_iter it = { fn, priv };
	return ext2fs_dir_iterate2(u->fs, dir, 0, NULL, umt_iter_proc, &it);
}

static pthread_once_t umt_et_once = PTHREAD_ONCE_INIT;

static void umt_et_init(void)
{
	initialize_ext2_error_table();
}

const char *umt_strerror(errcode_t err)
{
	pthread_once(&umt_et_once, umt_et_init);
	return error_message(err);
}

/* errno for a libext2fs error code (the kernel's answer to the same case). */
int umt_errno(errcode_t err)
{
	if (err > 0 && err < 4096)
		return (int)err;
	switch (err) {
	case EXT2_ET_FILE_NOT_FOUND: return ENOENT;
	case EXT2_ET_DIR_EXISTS: return EEXIST;
	case EXT2_ET_NO_DIRECTORY: return ENOTDIR;
	case EXT2_ET_RO_FILSYS: return EROFS;
	case EXT2_ET_BLOCK_ALLOC_FAIL:
	case EXT2_ET_INODE_ALLOC_FAIL:
	case EXT2_ET_DIR_NO_SPACE:
	case EXT2_ET_EA_NO_SPACE:
	case EXT2_ET_RES_GDT_BLOCKS:
		return ENOSPC;
	case EXT2_ET_FILE_TOO_BIG: return EFBIG;
	/* What mount(2) answers for a device without this filesystem. */
	case EXT2_ET_BAD_MAGIC:
	case EXT2_ET_SB_CSUM_INVALID:
	case EXT2_ET_CORRUPT_SUPERBLOCK:
	case EXT2_ET_UNEXPECTED_BLOCK_SIZE:
		return EINVAL;
	case EXT2_ET_NO_MEMORY: return ENOMEM;
	case EXT2_ET_SHORT_READ:
	case EXT2_ET_SHORT_WRITE:
		return EIO;
	case EXT2_ET_TOO_MANY_REFS: return EMLINK;
	case EXT2_ET_UNSUPP_FEATURE:
	case EXT2_ET_RO_UNSUPP_FEATURE:
		return EOPNOTSUPP;
	}
	return EUCLEAN;
}
