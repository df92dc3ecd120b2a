from ksmreplay.cli import main

main()
