from amobridge.cli import main

main()
