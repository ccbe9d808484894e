//go:build !linux || cohortd_heapmem

package index

// mapRegions is false where every region is a heap slice: other systems, and
// builds with the cohortd_heapmem tag (which CI uses to test this path on Linux).
const mapRegions = false

func mapRegion(int) region { panic("BUG: index: mapRegion without mapped regions") }

func unmapRegion([]byte) { panic("BUG: index: unmapRegion without mapped regions") }
