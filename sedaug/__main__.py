from sedaug.cli import main

main()
