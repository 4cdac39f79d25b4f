"""Who is asking and what they may have: signatures, callers, nonces, stacks, identifiers, rules."""
