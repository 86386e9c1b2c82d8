//go:build !unix

package main

import "io/fs"

// inode is unknown off Unix; modification time and size still detect rotations.
func inode(fs.FileInfo) (dev, ino uint64) { return 0, 0 }
