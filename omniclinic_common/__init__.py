"""What every omniclinic package shares and no library does for us: whole-or-nothing file writes and
private key files. Depends on the standard library only, so every package may import it."""
