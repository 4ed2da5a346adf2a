/*
** vm/idx.h -- reading IDX files (MNIST, Fashion-MNIST), gzipped or plain.
**
** Not yet part of glia.h; a host could use it as it stands (exported).
*/
#ifndef GLIA_IDX_H
#define GLIA_IDX_H

#include "glia.h"

/* Reads the IDX file at path (gzip-compressed or plain) into a new
** contiguous tensor of the file's shape. Element types convert to the
** matching dtype: u8 -> u8; i8, i16, i32 -> i32; f32 -> f32; f64 -> f64.
** The caller owns *out. A missing, truncated or corrupt file fails with
** GLIA_EIO or GLIA_EFORMAT and a message naming the file; *out untouched. */
GLIA_API glia_status glia_idx_read(glia_ctx *G, const char *path, glia_tensor **out);

#endif
