package xds

// SetParallelThreshold lets benchmarks compare serial and parallel conversion; it returns the old value.
func SetParallelThreshold(n int) int {
	old := parallelThreshold
	parallelThreshold = n
	return old
}
