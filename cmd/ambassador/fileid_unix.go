//go:build unix

package main

import (
	"io/fs"
	"syscall"
)

// inode returns the device and inode numbers of the file fi describes.
func inode(fi fs.FileInfo) (dev, ino uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev), uint64(st.Ino) //nolint:unconvert // not uint64 on every platform
	}
	return 0, 0
}
