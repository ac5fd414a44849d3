"""Side-by-side measurements of cuprumd against the kernel and the shell."""
