from sedaug import main

main()
