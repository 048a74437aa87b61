package restart

import "unsafe"

func bytesOfClone(a *cloneArgs) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(a)), unsafe.Sizeof(*a))
}
