package upstream

// Counters reports how many connections have a ce-id counter, so that tests
// can check refused and ended connections leave none behind.
func Counters(h *Handler) int { return h.events.Size() }
