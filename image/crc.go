package image

import "hash/crc32"

// The image's checksum is one CRC-32C over the whole stream, but page data
// is checksummed where it is read, on another thread than the one writing
// the stream: on two cores, checksumming a buffer-full while the previous
// one is being written takes the checksum off the writer's path (a tenth
// of a 1 GiB checkpoint's writer time). The pieces' CRCs are then folded
// into the stream's with crc32cCombine.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC-32C of b, for PageData.
func Checksum(b []byte) uint32 { return crc32.Update(0, castagnoli, b) }

// crc32cPoly is the Castagnoli polynomial in the reflected bit order that
// hash/crc32 computes in: bit 31 is the coefficient of x^0.
const crc32cPoly = 0x82f63b78

// mulModP multiplies two polynomials modulo the CRC polynomial, both in
// reflected order.
func mulModP(a, b uint32) uint32 {
	var p uint32
	for m := uint32(1) << 31; a != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
			a ^= m
		}
		if b&1 != 0 {
			b = b>>1 ^ crc32cPoly
		} else {
			b >>= 1
		}
	}
	return p
}

// xPow8nModP is x^(8n) modulo the CRC polynomial: appending n bytes to a
// message multiplies its CRC register by it. Square-and-multiply over the
// bits of n, so 64 steps at most.
func xPow8nModP(n uint64) uint32 {
	result := uint32(1) << 31 // x^0
	sq := uint32(1) << 23     // x^8
	for ; n != 0; n >>= 1 {
		if n&1 != 0 {
			result = mulModP(result, sq)
		}
		sq = mulModP(sq, sq)
	}
	return result
}

// crc32cCombine returns the CRC-32C of A followed by B, from A's CRC, B's
// CRC and B's length. The pre- and post-inversions of both CRCs cancel
// out, so the finished values combine directly.
func crc32cCombine(crcA, crcB uint32, lenB uint64) uint32 {
	return mulModP(xPow8nModP(lenB), crcA) ^ crcB
}
