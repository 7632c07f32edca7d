"""When records send: the timer queue, the bucket walk, the pacer, work in slices."""
