from crescent.cli import main

main()
