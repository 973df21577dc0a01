from tlkeras.cli import main

main()
