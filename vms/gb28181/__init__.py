"""GB/T 28181 device access: SIP signalling (platform side), media over RTP/PS."""
